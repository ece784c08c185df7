// llama-server's top-n logprobs (get_token_probabilities, server-common.cpp) from raw float32 logits on stdin:
// std::partial_sort of the first n by logit, then expf and a float cum_sum in the order the partial sort left the
// vector in (libstdc++'s heap order, not token order), p /= cum_sum, std::log(float). Prints "id logprob" lines.
// Build: g++ -O2 -ffp-contract=off server_logprobs.cpp -o server_logprobs
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

struct Cand { int id; float logit; float p; };

int main(int argc, char **argv) {
    size_t n_top = argc > 1 ? strtoul(argv[1], nullptr, 10) : 5;
    std::vector<Cand> cur;
    float v;
    while (fread(&v, sizeof v, 1, stdin) == 1) cur.push_back({(int)cur.size(), v, 0.0f});
    n_top = std::min(n_top, cur.size());
    std::partial_sort(cur.begin(), cur.begin() + n_top, cur.end(),
                      [](const Cand &a, const Cand &b) { return a.logit > b.logit; });
    float cum_sum = 0.0f;
    for (auto &t : cur) { t.p = expf(t.logit - cur[0].logit); cum_sum += t.p; }
    for (auto &t : cur) t.p /= cum_sum;
    for (size_t i = 0; i < n_top; i++) printf("%d %.5f\n", cur[i].id, (double)std::log(cur[i].p));
}

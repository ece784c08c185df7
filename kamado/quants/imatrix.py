"""(being written) imatrix files: GGUF and legacy .dat."""


def read_imatrix(path):
    raise NotImplementedError("read_imatrix is being written")

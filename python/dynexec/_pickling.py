"""How jobs and results are pickled on their way between processes."""
import pickle

import cloudpickle


def dumps(obj) -> bytes:
    """pickle where it is enough (several times faster), cloudpickle where it is not: lambdas, local
    functions, and whatever refers to __main__, which the other process cannot import."""
    try:
        out = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if b"__main__" not in out:
            return out
    except Exception:
        pass
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

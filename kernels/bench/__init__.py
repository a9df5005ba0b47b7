"""GPU benchmarks of the kernels: ``python -m kernels.bench {moe,attention}``."""


def environment() -> dict:
    """Device and library versions recorded in every benchmark JSON."""
    import datetime
    import platform

    import torch
    import triton

    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

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


def write_json(path: str | None, results: dict) -> None:
    """Write a benchmark's results to ``path`` (nothing when None). Scripts call it after every
    section, so a run cut short keeps the numbers it has; values JSON lacks (dtypes, devices) are
    written as strings."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=str)

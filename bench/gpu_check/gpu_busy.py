"""How busy the GPU was while something ran: NVML's utilisation (the share of time a kernel
was running), sampled every 0.1 s in a thread. Read through `pynvml` (nvidia-ml-py) when it
imports, else `nvidia-smi`; on a machine with neither (a CPU run) there is no figure."""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Callable

INTERVAL_S = 0.1


def utilization_reader(device_index: int = 0) -> Callable[[], float] | None:
    """A function returning the GPU's utilisation now (0-100), or None without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # noqa: BLE001 - no NVML library or no GPU: try nvidia-smi
        pass
    if shutil.which("nvidia-smi") is None:
        return None

    def smi() -> float:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device_index}", "--query-gpu=utilization.gpu",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0])

    try:
        smi()
    except Exception:  # noqa: BLE001 - nvidia-smi there but no GPU answers
        return None
    return smi


class GpuBusy:
    """`with GpuBusy(reader) as busy: ...` then `busy.percent`: the mean utilisation over
    the block (None without a reader or without a sample)."""

    def __init__(self, reader: Callable[[], float] | None):
        self.reader = reader
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.samples.append(self.reader())
            except Exception:  # noqa: BLE001 - a failed read is a missing sample
                pass

    def __enter__(self) -> "GpuBusy":
        if self.reader is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def percent(self) -> float | None:
        if not self.samples:
            return None
        return round(sum(self.samples) / len(self.samples), 1)

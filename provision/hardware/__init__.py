"""GPUs, driver and disks: probed on this machine, or described for a machine you plan to use."""

from provision.hardware.machine import Gpu, Machine

__all__ = ["Gpu", "Machine"]

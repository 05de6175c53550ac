"""Hand schedules for the fused structured-conv op, one module per target family.

Installed as ``tvm_structconv.schedules`` (see ``package_dir`` in setup.cfg). The x86, ARM and
CUDA schedules land with the fused kernel; until then the compiler uses TVM's defaults.
"""

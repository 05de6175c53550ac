"""Hand schedules of the fused structured-conv op and of the other fused functions.

Installed as ``tvm_structconv.schedules`` (see ``package_dir`` in setup.cfg): ``x86`` (any LLVM
CPU: the conv template, also MetaSchedule's custom rule), ``arm`` (aarch64 NEON), ``cpu``
(pools, dense, elementwise), ``cuda`` (the GPU conv) and ``target_info`` (vector width,
registers and cores read from a target).
"""

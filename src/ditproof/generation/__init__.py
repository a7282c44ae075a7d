"""The one generation path, its trajectory capture and the runtime fingerprint.

``generate`` (the denoising loop), ``execute`` (a run with its record and files), ``runtime``
(fingerprint and class), ``trajectory`` (checkpoints and fingerprints), ``attention`` /
``flash4`` / ``flash3`` (attention kernels), ``solver``, ``parallel``. Nothing is imported here,
so that a submodule (e.g. the attention kernels in a GPU bench) loads without the video encoder
(PyAV) that ``execute`` needs.
"""

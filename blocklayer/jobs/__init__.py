"""Block jobs and the copy engine they share.

The job core: :mod:`.state` (QEMU's status and verb tables), :mod:`.job` (the lifecycle),
:mod:`.manager` (the jobs of one program); the jobs: :mod:`.stream`, :mod:`.commit`,
:mod:`.mirror` (mirror and active commit); :mod:`.qmp_commands` (the QMP commands).
"""

"""``batchmv apply MATRIX.npy VECTORS.npy -o OUT.npy``: ``matvec`` on .npy files of any
size, streamed block by block within a memory budget, loss-free.

:mod:`.command` (arguments, exit status, the run in order), :mod:`.npy` (.npy headers),
:mod:`.files` (opening files without blocking or touching anyone else's; the OUT lock),
:mod:`.blockio` (blocks in and out of files), :mod:`.job` (the checks and the blocks),
:mod:`.output` (``OUT.partial``, ``--resume``, the rename), :mod:`.journal` (the journal
of finished blocks), :mod:`.content` (the digests ``--resume`` trusts), :mod:`.runners`
(the blocks run here or on a Dask cluster), :mod:`.errors` (what stops a run, and how it
is told).
"""

"""``batchmv bench``: batchmv against the native calls and the usual alternatives, with
the machine's roofline.

:mod:`.command` (arguments), :mod:`.config` (the grid and the run's settings),
:mod:`.suite` (the run in order), :mod:`.machine` (threads, libraries, the machine),
:mod:`.approaches` (what is timed), :mod:`.arrays` (the arrays of a grid point),
:mod:`.timing` (medians of blocks of calls, paired re-timing), :mod:`.roofline`,
:mod:`.grid`, :mod:`.overhead` (tiny calls), :mod:`.isolation` (``"fastest"`` against each
engine alone, in child processes), :mod:`.targets`, :mod:`.report` (text and JSON),
:mod:`.plot`.
"""

"""Readers of the sample files, one module per source format.

A format module answers two questions for the generator, and nothing else:

- on the consumer side, once, when a generator is built: what each entry holds (:func:`inspect_entries` ->
  one picklable :class:`EntryInfo` per entry, with the per-event array specs), validated with errors that name
  the file and key, and for each array how a reader gets its rows: ``("raw", extents)`` (byte extents that
  the readers ``preadv`` straight into shared memory, whatever the format) or the format's own read;
- in the reader processes: that own read (rows of one array into their destination), which must not import
  Keras.

:mod:`.hdf5` is today's only format. A new one (ROOT, parquet, ...) goes beside it as ``sources/<format>.py``
with the same two functions; the generator, the plan, the cache and the readers' shared-memory protocol stay
as they are.
"""

from dlkit.generators.sources.hdf5 import EntryInfo, inspect_entries

__all__ = ["EntryInfo", "inspect_entries"]

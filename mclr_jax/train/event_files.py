"""TensorBoard event files on resume: the events logged after the restored step are dropped.

A resumed run logs the steps after its checkpoint again. TensorBoard's own answer to that (purging
on a step that goes backwards, or on a SessionLog START event) depends on the reader and its flags;
rewriting the files holds for every TensorBoard started after the resume. This mirrors
`JsonlWriter.truncate_after` for metrics.jsonl. Needs TensorFlow, which writes the files.
"""

import glob
import logging
import os

from mclr_jax import errors

# The rewrite goes through this file, then is renamed over the original. Its name holds no
# "tfevents", so TensorBoard never reads it, even if a kill leaves it behind.
TMP_NAME = ".event-file-rewrite.tmp"
# A TFRecord around its payload: a uint64 length, the length's CRC32C and the payload's CRC32C.
_RECORD_FRAMING = 8 + 4 + 4


def truncate(logdir: str, step: int) -> int:
  """Drops the events after `step` from every event file in `logdir`; returns how many.

  A file's unreadable last record (a run killed while writing) is dropped too. A file is rewritten
  only if it loses something, and a crash during the rewrite leaves the original as it was. A file
  that does not hold TensorBoard events is left alone, with a warning.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the edges only)
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top

  tmp = os.path.join(logdir, TMP_NAME)
  if os.path.exists(tmp):  # left by a run killed during a rewrite; the original is intact
    os.remove(tmp)
  dropped = 0
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    kept, total, read_bytes = [], 0, 0
    records = iter(tf.data.TFRecordDataset(path))
    try:
      while True:
        try:
          record = next(records).numpy()
        except (StopIteration, tf.errors.DataLossError):  # the end, or a damaged last record
          break
        total += 1
        read_bytes += len(record) + _RECORD_FRAMING
        if event_pb2.Event.FromString(record).step <= step:
          kept.append(record)
    except message.DecodeError:
      logging.warning("%s does not hold TensorBoard events; it is left as it is.", path)
      continue
    # Bytes past the last whole record: a record cut short (TensorFlow's reader stops there
    # silently when even its length is incomplete).
    damaged = read_bytes != os.path.getsize(path)
    if len(kept) == total and not damaged:
      continue
    # A failed rewrite removes `tmp` and leaves the original untouched.
    with errors.writing_file(path, tmp), errors.tensorflow_disk_errors(path):
      with tf.io.TFRecordWriter(tmp) as writer:
        for record in kept:
          writer.write(record)
      os.replace(tmp, path)
    dropped += total - len(kept)
  return dropped

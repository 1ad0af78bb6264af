"""Errors of the sealed log transport. Each names the shard and the frame; none holds record content or a key.

TransportError                 the frame stream cannot be trusted, or opened; nothing is published
 ├── FrameKeyError             the run's key is missing or unusable (also a ValueError)
 ├── MalformedFrameError       a frame line is cut or garbled, or its content does not decode
 ├── FrameAuthenticationError  the wrong key, another run's or shard's frame, or an altered line
 ├── FrameGapError             frames are missing (dropped lines)
 ├── DuplicateFrameError       a frame appears twice
 ├── FrameOrderError           frames are out of order, or come after the trailer
 ├── RotatedLogError           the log starts past frame 0: the kubelet rotated it
 ├── MissingTrailerError       the stream ends without its trailer: cut, or the worker did not finish
 └── TrailerMismatchError      the trailer's counts or checksum disagree with the frames read, or its
                               record count with the shard's that the stage staged
"""

from __future__ import annotations


class TransportError(Exception):
    """The frame stream cannot be trusted, or opened; nothing is published."""


class FrameKeyError(TransportError, ValueError):
    """The key is missing or unusable (the message never contains the key)."""


class MalformedFrameError(TransportError):
    """A frame line is cut or garbled, or its content does not decode."""


class FrameAuthenticationError(TransportError):
    """A frame does not authenticate: the wrong key, another run's or shard's frame, or an altered line."""


class FrameGapError(TransportError):
    """Frames are missing."""


class DuplicateFrameError(TransportError):
    """A frame appears twice."""


class FrameOrderError(TransportError):
    """Frames are out of order, or come after the trailer."""


class RotatedLogError(TransportError):
    """The log starts past frame 0: the kubelet rotated the container log and the first frames are gone."""


class MissingTrailerError(TransportError):
    """The stream ends without its trailer."""


class TrailerMismatchError(TransportError):
    """The trailer's counts or checksum disagree with the frames read, or its record count with the staged
    shard's."""

"""Sound events: rules → detector (hysteresis, hold) → event log, clips, notifications.

`model.py` holds the two types every other room shares: `Event` (one detection, the fields the JSON, CSV, SQLite
log and notifications carry) and `EventListener` (what the detector calls on the inference thread).
"""

from streamtag.events.model import Event, EventListener, RuleHop

__all__ = ["Event", "EventListener", "RuleHop"]

"""The newest published weights, held for the actors to fetch when a rollout starts.

    holder.publish.remote(version, [ray.put(flat.payload(version))])   # the service, after an update
    latest = ray.get(holder.latest.remote(my_version))                  # a worker: None, or newer

The holder keeps only the newest version's reference, so the object store holds O(1) weight
versions however many actors there are, and each rollout acts on the newest weights when it
starts instead of the version current when its call was queued. The payload format is
actors/flat_weights.py's.
"""


class WeightsHolder:
    """A Ray actor with the newest published weights: a version and the object reference of its
    payload, wrapped in a list so that Ray passes the reference instead of the object."""

    def __init__(self):
        self.version, self.ref = -1, None

    def publish(self, version, wrapped_ref):
        if version > self.version:
            self.version, self.ref = version, wrapped_ref

    def latest(self, have=-1):
        """(version, [ref]) if a version newer than `have` is published, else None."""
        return None if self.version <= have or self.ref is None else (self.version, self.ref)

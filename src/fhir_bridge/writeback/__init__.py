"""Write-back room: deliver coordinators' changes from the outbox to the FHIR servers."""

from fhir_bridge.writeback.delivery import Delivery, DeliveryStats
from fhir_bridge.writeback.task_mirror import build_task

__all__ = ["Delivery", "DeliveryStats", "build_task"]

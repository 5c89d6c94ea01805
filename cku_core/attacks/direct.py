"""The request as is, in the model's chat template: the baseline every other attack is compared to."""

from cku_core.attacks.base import Attack

ATTACK = Attack(name="direct", family="direct", version="1", description="The plain request in the chat template.")

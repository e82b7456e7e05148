"""The pydantic base every spec section and recipe shares, and the field types they have in common."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A seed every generator kdx seeds accepts (numpy's legacy seeding stops at 2**32 - 1).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

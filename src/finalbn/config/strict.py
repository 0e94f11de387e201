"""The strict scalar types every configuration dataclass is built from.

    @dataclass(frozen=True, config=STRICT)
    class SplitConfig:
        seed: Seed

A YAML "10" (a string) is not an int and 1 is not a bool here; floats stay lax so that `lr: 1`
and an override `lr=3e-4` (YAML reads that as a string) both work. Used by `schema` and `study`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, Strict

STRICT = ConfigDict(extra="forbid")

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict(), Field(min_length=1)]
Seed = Annotated[int, Strict(), Field(ge=0)]
Count = Annotated[int, Strict(), Field(ge=0)]
Size = Annotated[int, Strict(), Field(ge=16, le=1024)]
Name = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
# (majority, minority) image counts of one split
Pair = tuple[Count, Count]
Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
PosFloat = Annotated[float, Field(gt=0.0)]
Replicates = Annotated[int, Strict(), Field(ge=1, le=1000)]

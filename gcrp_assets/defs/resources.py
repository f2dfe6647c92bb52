"""The resources of the code location: the dump inbox, the artifact store, the base model and the Pipes client.

Each path comes from an environment variable through `dg.EnvVar` (the UI shows `GCRP_INBOX`, not a path of
this machine), read when a run starts; an unset or empty variable gets its default when this module's
definitions load (`gcrp_assets.orchestration.resources.ENV_DEFAULTS`).
"""

import dagster as dg

from gcrp_assets.orchestration.resources import default_resources


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=default_resources())

"""The artifact layer: the typed manifest, the reader that checks an artifact before anything loads
it, and the writer that replaces one only when the new one is complete (docs/artifacts.md)."""

from .manifest import MANIFEST, REPORTS, SCHEMA, CoreMLBuild, Graph, Manifest, TvmBuild, sha256_file
from .reader import Artifact, open_artifact, read_manifest
from .writer import ArtifactWriter, check_output_directory

__all__ = ["MANIFEST", "REPORTS", "SCHEMA", "Artifact", "ArtifactWriter", "CoreMLBuild", "Graph", "Manifest",
           "TvmBuild", "check_output_directory", "open_artifact", "read_manifest", "sha256_file"]

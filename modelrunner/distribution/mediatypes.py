"""Docker's model artifact media types (distribution.md 1.3): write exactly, read leniently."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

CONFIG_V01 = "application/vnd.docker.ai.model.config.v0.1+json"
CONFIG_V02 = "application/vnd.docker.ai.model.config.v0.2+json"
CONFIG_CNCF = "application/vnd.cncf.model.config.v1+json"
CONFIG_TYPES = frozenset({CONFIG_V01, CONFIG_V02, CONFIG_CNCF})

GGUF = "application/vnd.docker.ai.gguf.v3"
MMPROJ = "application/vnd.docker.ai.mmproj"  # what Docker's code writes and reads
MMPROJ_SPEC = "application/vnd.docker.ai.gguf.v3.mmproj"  # the published spec's string
MMPROJ_TYPES = frozenset({MMPROJ, MMPROJ_SPEC})
CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
LICENSE = "application/vnd.docker.ai.license"
SAFETENSORS = "application/vnd.docker.ai.safetensors"
MODEL_FILE = "application/vnd.docker.ai.model.file"  # config.json, tokenizer files (v0.2 layers)
# Older safetensors artifacts (config v0.1): the config files as one tar, or directories as tars.
VLLM_CONFIG_TAR = "application/vnd.docker.ai.vllm.config.tar"
DIR_TAR = "application/vnd.docker.ai.dir.tar"
DDUF = "application/vnd.docker.ai.dduf"
LORA = "application/vnd.docker.ai.gguf.v3.lora"

# Layer annotations Docker's packager writes (readers must not require them).
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANNOTATION_UNTESTED = "org.cncf.model.file.mediatype.untested"

"""OpenVINO IR export and NNCF post-training quantization (needs the ``[convert]`` extra)."""

# Copyright 2026 The uniflow-hf authors. Licensed under the Apache License, Version 2.0.
"""The official UniFlow release's parameter names (github.com/ZhengrongYue/UniFlow) mapped to ours: the `key_mapping`
with which `uniflow_hf` loads an official folder."""

OFFICIAL_TO_HF_KEY_MAPPING = {
    r"^(embeddings|encoder)\.": r"vision_model.\1.",
    r"^chal_proj\.c_fc\.": "latent_proj.fc1.",
    r"^chal_proj\.c_proj\.": "latent_proj.fc2.",
    r"^chal_unproj\.c_fc\.": "latent_unproj.fc1.",
    r"^chal_unproj\.c_proj\.": "latent_unproj.fc2.",
    r"^global_block_pos_embed$": "global_position_embedding",
    r"^decoder_pos_embed$": "decoder_position_embedding",
    r"^flow_head\.net\.time_embed\.mlp\.0\.": "flow_head.time_embed.linear_1.",
    r"^flow_head\.net\.time_embed\.mlp\.2\.": "flow_head.time_embed.linear_2.",
    r"^flow_head\.net\.res_blocks\.(\d+)\.in_ln\.": r"flow_head.res_blocks.\1.norm.",
    r"^flow_head\.net\.res_blocks\.(\d+)\.mlp\.0\.": r"flow_head.res_blocks.\1.fc1.",
    r"^flow_head\.net\.res_blocks\.(\d+)\.mlp\.2\.": r"flow_head.res_blocks.\1.fc2.",
    r"^flow_head\.net\.(res_blocks\.\d+|final_layer)\.adaLN_modulation\.1\.": r"flow_head.\1.modulation.",
    r"^flow_head\.net\.": "flow_head.",
}


__all__ = ["OFFICIAL_TO_HF_KEY_MAPPING"]

"""Group-chat roleplay (GCRP) training assets: forum dumps to LoRA adapters and eval reports."""

"""The project's two end-to-end jobs on a corpus it synthesises: the main job (`python -m mamba_hubert.demo`,
`make demo`: pretrain, fine-tune, decode and analyse tiny Mamba and Transformer HuBERTs) and the paper's comparison
(`mamba-hubert-paper`, `make paper`: the SSL models with a linear or a Conformer head, and a reconstruction-task
Mamba, with layer-wise MI through each)."""

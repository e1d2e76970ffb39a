"""The agent's names the config chooses among, without torch (configs/ imports them to check a run
before anything heavy loads); torsos.py builds them."""
TORSOS = ("auto", "nature", "impala_resnet", "mlp")

"""lartpcdnn: particle classification in the LArIAT liquid-argon TPC, an experiment package on dlkit.

Modules: ``simulate`` (LArIAT-layout simulator and its CLI), ``preprocess`` (the worker pre-process:
down-sample, crop, normalise), ``data`` (generators and test set), ``models`` (siamese CNN, dense baseline),
``analysis`` (AUC, efficiency at 1 % fake, confusion, vs energy), ``ClassificationExperiment`` (the CLI),
``pid_study`` (the larger dedicated run behind the efficiency-at-1 %-fake row, with a truth-level bound),
``point_study`` (the point models on the 3D deposits next to the CNN: ``compare_models``).
Importing the package imports nothing heavy (reader processes import ``lartpcdnn.preprocess``).
"""

"""Default scan configs of calodnn (plain Python files defining ``Config`` and ``Params``)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent

#: CaloSimConfig overrides of the simulated regression dataset: the same showers and fluctuations as the
#: classification dataset, stored as raw visible energies (thin/thick ECAL and HCAL sampling fractions).
#: Here, not in calodnn.regression, so that RegressionExperiment's DEFAULTS (and --help) import nothing heavy.
REGRESSION_SIM_CONFIG = {"raw_visible_energy": True}

"""clustercount: drift-chamber cluster counting (seed 004) on dlkit.

- :mod:`clustercount.simulate`: waveforms of a 90/10 He/iC4H10 cell (Poisson clusters with a relativistic rise,
  Fischle cluster sizes with mean ~1.5, drift and diffusion, Polya gain, electronics, noise, 1.2 GHz ADC), HDF5 files.
- :mod:`clustercount.baselines`: the derivative peak finder and time-proximity clusterization.
- :mod:`clustercount.data`: candidate-peak windows and peak-time encodings derived from the waveforms; generators.
- :mod:`clustercount.preprocess`: the generator's per-batch pre-processes (numpy only: the readers import it).
- :mod:`clustercount.PeakFindingExperiment`, :mod:`clustercount.ClusterizationExperiment`: the two-step
  reconstruction (LSTM peak finding, 1D-CNN cluster counting) with DLKit's CLI and bookkeeping;
  :mod:`clustercount.chain` trains (once) the peak finder that feeds the clusterization by default.
- :mod:`clustercount.pid`: pi/K separation power of dN/dx vs dE/dx over tracks of many cells.
"""

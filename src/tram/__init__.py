"""tram: training-time attacks on cooperative multi-agent reinforcement learning.

Implements TRAM (Wu, Wang et al., "Model and Method: Training-Time Attack for Cooperative
Multi-Agent Reinforcement Learning") on JAX: grid tasks and SMAX maps, DOP and COMA
learners, and the variance-based, J-based and random action-sampling attacks.
"""

__version__ = "0.1.0"

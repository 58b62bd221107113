//! The agent's Prometheus metrics (`weft_agent_…`).

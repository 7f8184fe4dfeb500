"""asyncio drivers that run the ``proto`` machines over ``transport`` connections."""

"""The studies hosted on the core: ``scene``, ``clca``, ``normgenesis``.

Each study is a package of its own that the core finds through the
``scene_sim.studies`` entry-point group (:mod:`scene_sim.plugins`); nothing
here is imported by the core, and no study imports another.
"""

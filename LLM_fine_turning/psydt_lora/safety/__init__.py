"""Safety: the lexicon (rules, data/lexicon.json), the guard model beside it (guard), the help resources
(resources, data/resources_zh.json), the one reply screen chat, serve and test use (screen), what a front
end holds (session.Safety) and the measurement of the layers (measurement).

Imports data and the ground floor only, so every front end can use it."""

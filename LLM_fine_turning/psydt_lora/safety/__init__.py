"""Safety: crisis-language rules and help resources (data/), the guard model beside them.

Imports data and the ground floor only, so every front end can use it."""

"""The embedded demo: ShapesVQA (synth), the tiny bases' corpus and pretraining, and the tiny model
builders the quickstart and the tests start from. It sits above the general rooms and uses them;
none of them imports it."""

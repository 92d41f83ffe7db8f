"""The experiment inside a stimulus package: PsychoPy-loadable trial files and a PsychoPy (Coder) script.

Trial files (``runs/runNN.csv``) follow PsychoPy's conditions-file format as ``data.importConditions`` reads it:
one header row whose names are valid Python identifiers, none repeated, then one row per trial. The script
``experiment.py`` shows a fixation cross, waits for the scanner trigger, then presents each trial at its
onset for its duration (a block or event-related design, from ``braindive.stimuli.design``), and logs the
actual onsets to ``data/<participant>_run<NN>.csv``. It needs PsychoPy (``pip install psychopy``), not braindive.
``experiment.psyexp`` is the same design for PsychoPy Builder (minimal: parameters not written take Builder's
defaults): a trigger routine, then a loop over the chosen run's trial file whose routine shows the image for
``duration`` with fixation until ``fixation_after`` has passed; Builder times each trial from the end of the
previous one, the script from the run's absolute onsets.
"""
from __future__ import annotations

import json
import keyword
import re
import xml.etree.ElementTree as ET

__all__ = ["check_columns", "script", "psyexp", "TRIAL_COLUMNS"]

TRIAL_COLUMNS = ("trial", "onset", "duration", "fixation_after", "block", "condition", "label", "category", "image",
                 "seed", "source")


def check_columns(columns) -> list[str]:
    """``columns`` if each is a valid Python identifier (not a keyword) and none repeats; ``ValueError`` otherwise."""
    columns = list(columns)
    bad = [c for c in columns if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", c) or keyword.iskeyword(c)]
    if bad:
        raise ValueError(f"PsychoPy conditions columns must be valid Python identifiers, got {bad}.")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ValueError(f"PsychoPy conditions columns must be unique, got {repeated} more than once.")
    return columns


_SCRIPT = '''"""Stimulus presentation for this package (PsychoPy Coder script, written by braindive.stimuli).

Run:  python experiment.py       (PsychoPy >= 2023.1; pick the participant and run in the dialog)
Design: {design}; {n_runs} run(s); timing in runs/runNN.csv (onset, duration, fixation_after; seconds).
The run starts at the trigger key {trigger!r} (most scanners send it as a key press); Escape quits.
"""
import csv
import os

from psychopy import core, data, event, gui, visual

SETTINGS = {settings}
HERE = os.path.dirname(os.path.abspath(__file__))

info = {{"participant": "", "run": 1}}
if not gui.DlgFromDict(info, title="BrainDiVE stimuli", order=["participant", "run"]).OK:
    core.quit()
run = int(info["run"])
trials = data.importConditions(os.path.join(HERE, "runs", "run%02d.csv" % run))

win = visual.Window(size=SETTINGS["window"], fullscr=SETTINGS["fullscreen"], color=SETTINGS["background"],
                    units="pix")
fixation = visual.TextStim(win, text="+", height=SETTINGS["fixation_size"], color=SETTINGS["fixation_color"])
image = visual.ImageStim(win, size=(SETTINGS["image_size"], SETTINGS["image_size"]))
clock = core.Clock()


def wait_until(t, draw_image=False):
    while clock.getTime() < t:
        if draw_image:
            image.draw()
        fixation.draw()
        win.flip()
        if "escape" in event.getKeys(["escape"]):
            win.close()
            core.quit()


fixation.draw()
win.flip()
event.waitKeys(keyList=[SETTINGS["trigger_key"]])
clock.reset()
log = []
for trial in trials:
    image.image = os.path.join(HERE, trial["image"])
    wait_until(trial["onset"])
    shown = clock.getTime()
    wait_until(trial["onset"] + trial["duration"], draw_image=True)
    log.append(dict(trial, shown=round(shown, 4), hidden=round(clock.getTime(), 4)))
wait_until(trials[-1]["onset"] + trials[-1]["duration"] + trials[-1]["fixation_after"] + SETTINGS["lead_out"])
os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
with open(os.path.join(HERE, "data", "%s_run%02d.csv" % (info["participant"] or "anonymous", run)), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(log[0]))
    writer.writeheader()
    writer.writerows(log)
win.close()
core.quit()
'''


def script(design, n_runs: int, image_size: int, trigger_key: str = "t", fullscreen: bool = True) -> str:
    """The PsychoPy script's text for ``design`` (a ``braindive.stimuli.design.Design``)."""
    settings = {"window": [1024, 768], "fullscreen": fullscreen, "background": [0, 0, 0], "fixation_size": 24,
                "fixation_color": "white", "image_size": int(image_size), "trigger_key": trigger_key,
                "lead_out": design.lead_in}
    return _SCRIPT.format(design=design.design, n_runs=n_runs, trigger=trigger_key,
                          settings=json.dumps(settings).replace("true", "True").replace("false", "False"))


def _param(parent, name: str, val, val_type: str, updates: str = "None") -> None:
    ET.SubElement(parent, "Param", name=name, val=str(val), valType=val_type, updates=updates)


def _text(routine, name: str, stop: str, text: str = "+") -> None:
    c = ET.SubElement(routine, "TextComponent", name=name, plugin="None")
    for args in (("name", name, "code"), ("text", text, "str", "constant"), ("startType", "time (s)", "str"),
                 ("startVal", "0.0", "code"), ("stopType", "duration (s)", "str"), ("stopVal", stop, "code", "constant"),
                 ("letterHeight", "0.05", "num", "constant"), ("color", "white", "color", "constant")):
        _param(c, *args)


def psyexp(design, image_height: float = 0.5, trigger_key: str = "t") -> str:
    """A minimal PsychoPy Builder experiment (XML) running ``runs/runNN.csv`` (NN from the "run" field of the dialog);
    images ``image_height`` of the screen height tall."""
    root = ET.Element("PsychoPy2experiment", encoding="utf-8", version="2023.2.0")
    settings = ET.SubElement(root, "Settings")
    for args in (("expName", "braindive_stimuli", "str"), ("Experiment info", "{'participant': '', 'run': '1'}", "code"),
                 ("Full-screen window", "True", "bool"), ("Units", "height", "str"), ("Save csv file", "True", "bool")):
        _param(settings, *args)
    routines = ET.SubElement(root, "Routines")
    wait = ET.SubElement(routines, "Routine", name="wait_trigger")
    _text(wait, "waiting", "", "+")
    key = ET.SubElement(wait, "KeyboardComponent", name="trigger", plugin="None")
    for args in (("name", "trigger", "code"), ("allowedKeys", repr(trigger_key), "list", "constant"),
                 ("forceEndRoutine", "True", "bool"), ("store", "last key", "str"), ("startType", "time (s)", "str"),
                 ("startVal", "0.0", "code"), ("stopType", "duration (s)", "str"), ("stopVal", "", "code", "constant")):
        _param(key, *args)
    lead = ET.SubElement(routines, "Routine", name="lead_in")
    _text(lead, "lead_fixation", str(design.lead_in))
    trial = ET.SubElement(routines, "Routine", name="trial")
    _text(trial, "fixation", "$duration + fixation_after")
    image = ET.SubElement(trial, "ImageComponent", name="image", plugin="None")
    for args in (("name", "image", "code"), ("image", "$image", "file", "set every repeat"),
                 ("size", f"({image_height}, {image_height})", "list", "constant"), ("startType", "time (s)", "str"),
                 ("startVal", "0.0", "code"), ("stopType", "duration (s)", "str"), ("stopVal", "$duration", "code", "constant")):
        _param(image, *args)
    flow = ET.SubElement(root, "Flow")
    ET.SubElement(flow, "Routine", name="wait_trigger")
    ET.SubElement(flow, "Routine", name="lead_in")
    loop = ET.SubElement(flow, "LoopInitiator", loopType="TrialHandler", name="trials")
    for args in (("name", "trials", "code"), ("loopType", "sequential", "str"), ("nReps", "1", "code"),
                 ("conditionsFile", "$'runs/run%02d.csv' % int(expInfo['run'])", "file"), ("isTrials", "True", "bool")):
        _param(loop, *args)
    ET.SubElement(flow, "Routine", name="trial")
    ET.SubElement(flow, "LoopTerminator", name="trials")
    ET.SubElement(flow, "Routine", name="lead_in")
    ET.indent(root)
    return '<?xml version="1.0" ?>\n' + ET.tostring(root, encoding="unicode") + "\n"

"""tools.drift: the objects a `pulumi preview --refresh --json` changes, named in the summary."""

from __future__ import annotations

from tools.drift import drifted, summary

PVC_URN = "urn:pulumi:prod::mlcache::mlcache:index:CacheVolume$kubernetes:core/v1:PersistentVolumeClaim::cache-pvc"
JOB_URN = "urn:pulumi:prod::mlcache::mlcache:index:TrainingJob$kubernetes:batch/v1:Job::training-job"


def test_changed_steps_are_named_with_their_fields():
    preview = {
        "steps": [
            {"op": "same", "urn": JOB_URN},
            {
                "op": "update",
                "urn": PVC_URN,
                "newState": {"inputs": {"metadata": {"name": "ms-swift-cache-pvc"}}},
                "detailedDiff": {"metadata.labels.app.kubernetes.io/part-of": {"kind": "update"}},
            },
        ]
    }
    (drift,) = drifted(preview)
    assert drift.label == "PersistentVolumeClaim/ms-swift-cache-pvc" and drift.op == "update"
    text = summary("prod", [drift])
    assert "DRIFT in 1 object" in text and "PersistentVolumeClaim/ms-swift-cache-pvc" in text and "part-of" in text
    assert "`PersistentVolumeClaim/ms-swift-cache-pvc` (update)" in summary("prod", [drift], markdown=True)


def test_no_changed_steps_is_no_drift():
    assert drifted({"steps": [{"op": "same", "urn": JOB_URN}]}) == []
    assert summary("dev", []) == "stack dev: no drift (the live cluster matches the stack)\n"

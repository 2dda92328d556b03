from nodemesh.cmd.status_view import format_status

SYNCZ = {
    "model": {
        "version": "3f2a1c9d8e7f6a5b",
        "generation": 4,
        "errors": [
            {
                "object": "CiliumEnvoyConfig default/broken",
                "field": "spec.resources[0]",
                "reason": "unknown @type 'type.googleapis.com/nope'",
                "kept_previous": True,
            }
        ],
        "warnings": [],
    },
    "sources": [{"name": "files", "errors": ["bad.yaml: line 3: mapping values are not allowed"]}],
    "clients": [
        {
            "node": "node-b",
            "api": "delta",
            "types": {
                "CDS": {"state": "SYNCED", "version": "aaaa", "last_ack": "2026-11-26T05:00:01Z"},
                "LDS": {"state": "ERROR", "version": "bbbb", "error": "duplicate listener"},
            },
        },
        {"node": "node-a", "api": "sotw", "types": {}},
    ],
}


def test_table_has_one_row_per_client_sorted_and_states_per_type() -> None:
    text = format_status(SYNCZ)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    assert lines[header + 1].startswith("node-a")
    assert "NOT_SENT" in lines[header + 1]
    assert "SYNCED aaaa" in lines[header + 2] and "ERROR bbbb" in lines[header + 2]


def test_problems_name_object_field_node_and_message() -> None:
    text = format_status(SYNCZ)
    assert "CiliumEnvoyConfig default/broken: spec.resources[0]: unknown @type" in text
    assert "previous version still serving" in text
    assert "files: bad.yaml: line 3" in text
    assert "node-b LDS: duplicate listener" in text


def test_no_clients_says_so() -> None:
    assert "no Envoy is connected" in format_status({"model": {}, "clients": []})

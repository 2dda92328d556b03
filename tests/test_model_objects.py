from nodemesh.model.objects import LabelSelector, SelectorRequirement, pairs


def test_empty_selector_selects_everything() -> None:
    assert LabelSelector().matches({"app": "curl"})
    assert LabelSelector().matches({})


def test_match_labels_and_expressions() -> None:
    sel = LabelSelector(
        match_labels=pairs({"app": "curl"}),
        match_expressions=(SelectorRequirement("tier", "NotIn", ("db",)),),
    )
    assert sel.matches({"app": "curl"})
    assert sel.matches({"app": "curl", "tier": "web"})
    assert not sel.matches({"app": "curl", "tier": "db"})
    assert not sel.matches({"app": "httpbin"})

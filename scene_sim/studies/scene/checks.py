"""Content checks for a scenario beyond its schema.

:func:`lint_scenario` checks that the hidden script actually carries the
intended test: in-register lines enact the norm, the precedent breach
breaches it, and sanction lines take the assigned modality. The bank's tests
and the scenario generator both use it.
"""

from __future__ import annotations

from scene_sim.studies.scene.heuristics import CueReader
from scene_sim.studies.scene.scenario import Scenario, parse_line
from scene_sim.studies.scene.taxonomy import Taxonomy
from scene_sim.world import ChatTurn

__all__ = ["lint_scenario"]


def _turn(turn_id: int, actor: str, kind: str, content: str, target: int | None = None) -> ChatTurn:
    return ChatTurn(turn_id=turn_id, actor=actor, kind=kind, content=content, target_turn_id=target)  # type: ignore[arg-type]


def lint_scenario(scenario: Scenario, taxonomy: Taxonomy) -> list[str]:
    """Problems with the hidden script of ``scenario``; empty when it is sound.

    Checks, using the taxonomy's observable cues:
      * no in-register line reads as a breach of the norm, and at least
        ``demonstration_min_count`` of them read as compliance (for norms
        whose compliance is observable);
      * the precedent demonstrator's lines breach the norm and the other
        personas' precedent lines sanction that breach in the assigned
        modality;
      * every sanction line, applied to a typical subject breach, takes the
        assigned modality (reactions for corrective reactions, the subject's
        name for a callout, an echo for mocking, no uptake for ignoring).
    """
    reader = CueReader(taxonomy)
    t = scenario.tuple
    norm = taxonomy.norm(t.norm)
    partner = taxonomy.partner(t.norm)
    sanction = taxonomy.sanctions[t.sanction]
    subject = scenario.scaffold.subject.name
    problems: list[str] = []

    demos = 0
    for p in scenario.hidden.personas:
        for i, line in enumerate(p.in_register_lines):
            parsed = parse_line(line, subject)
            stance = reader.stance(norm.id, _turn(50, p.name, parsed.action, parsed.content, 1))
            if stance == "breach":
                problems.append(
                    f"hidden.personas[{p.name}].in_register_lines[{i}]: reads as a breach of {norm.id}: {line!r}"
                )
            demos += stance == "comply"
    need = scenario.hidden.fidelity_criteria.demonstration_min_count
    if norm.cues.comply and demos < need:
        problems.append(f"hidden.personas: only {demos} in-register lines read as {norm.id}, need {need}")

    # A typical subject breach: the partner pole's register, its wordiest
    # template (so that echo-based sanctions have words to echo).
    breach = max(partner.scripted.comply, key=lambda a: (a.action == "message", len(a.content)))
    offence = _turn(40, subject, breach.action, breach.content, 1 if breach.action == "react" else None)
    _check_sanctions(reader, scenario, sanction.id, offence, problems, precedent=False)

    demo_name = scenario.hidden.precedent_demonstrator
    if t.precedent == 1 and demo_name:
        lines = scenario.persona(demo_name).precedent_lines_or_null or ()
        for i, line in enumerate(lines):
            parsed = parse_line(line, subject)
            turn = _turn(30 + i, demo_name, parsed.action, parsed.content, 1 if parsed.action == "react" else None)
            if norm.cues.breach and reader.stance(norm.id, turn) != "breach":
                problems.append(
                    f"hidden.personas[{demo_name}].precedent_lines_or_null[{i}]: "
                    f"does not read as a breach of {norm.id}: {line!r}"
                )
        first = parse_line(lines[0], subject) if lines else None
        if first is not None:
            offence = _turn(30, demo_name, first.action, first.content, 1 if first.action == "react" else None)
            _check_sanctions(reader, scenario, sanction.id, offence, problems, precedent=True)
    return problems


def _check_sanctions(
    reader: CueReader, scenario: Scenario, sanction_id: str, offence: ChatTurn, problems: list[str], *, precedent: bool
) -> None:
    field = "precedent_lines_or_null" if precedent else "sanction_lines"
    for p in scenario.hidden.personas:
        if precedent and p.name == scenario.hidden.precedent_demonstrator:
            continue
        lines = (p.precedent_lines_or_null or ()) if precedent else p.sanction_lines
        for i, line in enumerate(lines):
            parsed = parse_line(line, scenario.scaffold.subject.name, offence.content)
            target = offence.turn_id if parsed.action == "react" else None
            turn = _turn(offence.turn_id + 1, p.name, parsed.action, parsed.content, target)
            got = reader.sanction_modality(turn, offence, [offence, turn], expected=sanction_id)
            if got != sanction_id:
                problems.append(
                    f"hidden.personas[{p.name}].{field}[{i}]: does not read as {sanction_id} (got {got}): {line!r}"
                )

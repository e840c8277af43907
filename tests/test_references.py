"""Object references and object-level edits (agents/references.py), and the parse that carries them."""
import pytest

from ditflow.agents import references as rf
from ditflow.agents import scene as sc
from ditflow.agents.parsing import Context, GalleryItem, next_gallery, parse_rules
from ditflow.schemas import InputImage, ObjectEdit, SceneObject

O = SceneObject
TRIANGLES = [O(id=1, shape="triangle", color="green", size="small", position="top-left", box=(4, 1, 23, 21)),
             O(id=2, shape="triangle", color="green", size="large", position="top-right", box=(36, 5, 60, 30)),
             O(id=3, shape="triangle", color="green", size="large", position="bottom-right", box=(36, 37, 57, 59))]
MIXED = [O(id=1, shape="circle", color="red", size="small", position="top-left", box=(4, 4, 18, 18)),
         O(id=2, shape="square", color="blue", size="large", position="center", box=(18, 18, 46, 46)),
         O(id=3, shape="circle", color="yellow", size="large", position="bottom-right", box=(40, 40, 62, 62))]


def edits(text, objects, focus=()):
    return [e.model_dump(exclude_none=True, exclude_defaults=True)
            for e in rf.object_edits(sc.normalise(text), objects, list(focus))]


@pytest.mark.parametrize("text, want", [
    ("make the top left triangle red", [{"op": "recolor", "targets": [1], "color": "red"}]),
    ("Could you paint the lower right triangle yellow?", [{"op": "recolor", "targets": [3], "color": "yellow"}]),
    ("turn the triangle at the top left into a red circle",
     [{"op": "reshape", "targets": [1], "shape": "circle", "color": "red"}]),
    ("make every triangle blue", [{"op": "recolor", "targets": [1, 2, 3], "color": "blue"}]),
    ("remove the bottom right triangle", [{"op": "remove", "targets": [3]}]),
    ("make the smaller triangle bigger", [{"op": "resize", "targets": [1], "size": "large"}]),
    ("move the small triangle to the bottom left", [{"op": "move", "targets": [1], "position": "bottom-left"}]),
])
def test_references_pick_one_of_three_alike(text, want):
    assert edits(text, TRIANGLES) == want


@pytest.mark.parametrize("text, want", [
    ("remove one of them", [{"op": "remove", "targets": [3]}]),
    ("make two of them red", [{"op": "recolor", "targets": [2, 3], "color": "red"}]),
    ("remove them", [{"op": "remove", "targets": [1, 2, 3]}]),
])
def test_some_of_them_takes_that_many(text, want):
    """Own wording: "one of them" after three alike is one of them, not all."""
    assert edits(text, TRIANGLES, focus=[1, 2, 3]) == want


@pytest.mark.parametrize("text, want", [
    ("make the red one blue", [{"op": "recolor", "targets": [1], "color": "blue"}]),
    ("change the color of the square to green", [{"op": "recolor", "targets": [2], "color": "green"}]),
    ("get rid of the yellow circle", [{"op": "remove", "targets": [3]}]),
    ("swap the red circle and the blue square", [{"op": "swap", "targets": [1, 2]}]),
    ("add a purple diamond at the bottom left",
     [{"op": "add", "shape": "diamond", "color": "purple", "position": "bottom-left"}]),
    ("make both circles orange", [{"op": "recolor", "targets": [1, 3], "color": "orange"}]),
    ("duplicate the blue square", [{"op": "duplicate", "targets": [2]}]),
    ("move the yellow circle up", [{"op": "move", "targets": [3], "position": "right"}]),
    ("make the background black", [{"op": "background", "color": "black"}]),
    ("put the red circle in the bottom left corner", [{"op": "move", "targets": [1], "position": "bottom-left"}]),
    ("place the blue square at the top right", [{"op": "move", "targets": [2], "position": "top-right"}]),
    ("move the circle on the left to the bottom", [{"op": "move", "targets": [1], "position": "bottom"}]),
    ("the blue square should be in the top right", [{"op": "move", "targets": [2], "position": "top-right"}]),
    ("I want the blue square at the bottom left", [{"op": "move", "targets": [2], "position": "bottom-left"}]),
    ("swap the positions of the square and yellow circle", [{"op": "swap", "targets": [2, 3]}]),
    ("let the square be pink", [{"op": "recolor", "targets": [2], "color": "pink"}]),
    ("the circle on the right should be red", [{"op": "recolor", "targets": [3], "color": "red"}]),
    ("remove everything except the square", [{"op": "remove", "targets": [1, 3]}]),
    ("make the top left circle red and move it to the bottom left",
     [{"op": "recolor", "targets": [1], "color": "red"}, {"op": "move", "targets": [1], "position": "bottom-left"}]),
])
def test_references_by_attribute_position_and_kind(text, want):
    assert edits(text, MIXED) == want


ROW = [O(id=1, shape="circle", color="red", position="left", box=(4, 24, 18, 38)),
       O(id=2, shape="circle", color="green", position="right", box=(44, 24, 58, 38)),
       O(id=3, shape="square", color="blue", position="top", box=(26, 4, 38, 16))]


@pytest.mark.parametrize("text, want", [
    ("color the circles purple and the square orange",
     [{"op": "recolor", "targets": [1, 2], "color": "purple"}, {"op": "recolor", "targets": [3], "color": "orange"}]),
    ("swap the colors of the circles",
     [{"op": "recolor", "targets": [1], "color": "green"}, {"op": "recolor", "targets": [2], "color": "red"}]),
    ("switch the places of the two circles", [{"op": "swap", "targets": [1, 2]}]),
    ("swap the circles", [{"op": "swap", "targets": [1, 2]}]),
    ("switch the circles to squares", [{"op": "reshape", "targets": [1, 2], "shape": "square"}]),
    ("switch the red circle to green", [{"op": "recolor", "targets": [1], "color": "green"}]),
    ("move both circles to the top",
     [{"op": "move", "targets": [1], "position": "top-left"}, {"op": "move", "targets": [2], "position": "top-right"}]),
    ("make the left circle and the square red", [{"op": "recolor", "targets": [1, 3], "color": "red"}]),
    ("make a copy of the red circle on the top right", [{"op": "duplicate", "targets": [1], "position": "top-right"}]),
])
def test_several_objects_in_one_clause(text, want):
    assert edits(text, ROW) == want


@pytest.mark.parametrize("text, want", [
    # a replacement said in two clauses is a reshape where the old object was, as "replace ... with ..." is
    ("take out the left circle and put a square there instead", [{"op": "reshape", "targets": [1], "shape": "square"}]),
    ("remove the green circle and add a pink diamond in its place",
     [{"op": "reshape", "targets": [2], "shape": "diamond", "color": "pink"}]),
    ("replace the square with a yellow triangle", [{"op": "reshape", "targets": [3], "shape": "triangle",
                                                    "color": "yellow"}]),
    ("make the left one a diamond", [{"op": "reshape", "targets": [1], "shape": "diamond"}]),
    ("make the square a big red circle", [{"op": "reshape", "targets": [3], "shape": "circle", "color": "red",
                                           "size": "large"}]),
    # shapes spoken of as bodies
    ("make the square fatter", [{"op": "resize", "targets": [3], "size": "large"}]),
    ("let the red circle bulk up", [{"op": "resize", "targets": [1], "size": "large"}]),
    ("the square should lose some weight", [{"op": "resize", "targets": [3], "size": "small"}]),
    # a new object placed by one already there, named before or after it
    ("give the square a purple circle beside it", [{"op": "add", "shape": "circle", "color": "purple",
                                                    "position": "top-right"}]),
    ("give the square an orange triangle under it", [{"op": "add", "shape": "triangle", "color": "orange",
                                                      "position": "center"}]),
    ("put a small pink diamond just below the blue square", [{"op": "add", "shape": "diamond", "color": "pink",
                                                              "size": "small", "position": "center"}]),
])
def test_replacements_bodies_and_new_objects_placed_by_others(text, want):
    assert edits(text, ROW) == want


@pytest.mark.parametrize("text, want", [
    # headline wording, without articles
    ("delete left circle", [{"op": "remove", "targets": [1]}]),
    ("make green circle blue", [{"op": "recolor", "targets": [2], "color": "blue"}]),
    ("remove right circle and put a diamond in place", [{"op": "reshape", "targets": [2], "shape": "diamond"}]),
    ("make blue square big", [{"op": "resize", "targets": [3], "size": "large"}]),
    ("paint left circle yellow and move it down", [{"op": "recolor", "targets": [1], "color": "yellow"},
                                                   {"op": "move", "targets": [1], "position": "bottom-left"}]),
    ("make a big red triangle", []),  # a new object, not a reference
    # clauses without "and", and numbered steps
    ("add a diamond, make the left circle blue", [{"op": "add", "shape": "diamond", "position": "bottom"},
                                                 {"op": "recolor", "targets": [1], "color": "blue"}]),
    ("step 1: make the square red. step 2: make it large.", [{"op": "recolor", "targets": [3], "color": "red"},
                                                             {"op": "resize", "targets": [3], "size": "large"}]),
])
def test_references_without_an_article(text, want):
    assert edits(text, ROW) == want


LINE = [O(id=1, shape="square", color="blue", position="left", box=(4, 24, 18, 38)),
        O(id=2, shape="square", color="blue", position="center", box=(25, 24, 39, 38)),
        O(id=3, shape="square", color="blue", position="right", box=(46, 24, 60, 38)),
        O(id=4, shape="circle", color="red", position="bottom-left", box=(4, 46, 18, 60))]


@pytest.mark.parametrize("text, want", [
    # a relation to another object picks which one: "the X by the Y"
    ("delete the square next to the red circle", [{"op": "remove", "targets": [1]}]),
    ("paint the square closest to the circle green", [{"op": "recolor", "targets": [1], "color": "green"}]),
    ("make the circle that is below the square orange", [{"op": "recolor", "targets": [4], "color": "orange"}]),
    # ordinals after the noun
    ("paint the square third from the left red", [{"op": "recolor", "targets": [3], "color": "red"}]),
    ("make the square that is second from the right yellow", [{"op": "recolor", "targets": [2],
                                                               "color": "yellow"}]),
    # some of several alike: any will do
    ("take away one of the squares", [{"op": "remove", "targets": [3]}]),
    ("get rid of 2 of the squares", [{"op": "remove", "targets": [2, 3]}]),
    ("cut the number of squares from three to one", [{"op": "remove", "targets": [2, 3]}]),
    ("change the count of circles from one to two", [{"op": "duplicate", "targets": [4], "position": "bottom"}]),
    # a relation as where a move goes, and sides said without an article
    ("put the circle above the middle square", [{"op": "move", "targets": [4], "position": "top"}]),
    ("move the circle to the right of the middle square",  # taken: a free cell beside it
     [{"op": "move", "targets": [4], "position": "bottom"}]),
    ("shift the circle from left to right", [{"op": "move", "targets": [4], "position": "bottom-right"}]),
    ("move the circle to upper", [{"op": "move", "targets": [4], "position": "top-left"}]),
    ("slide the circle to the upper part", [{"op": "move", "targets": [4], "position": "top-left"}]),
    # a comparative that names the object is no resize; bare nouns both in the picture are a pair to swap
    ("colour larger square to pink", None),  # all three are the same size
    ("exchange circle and square", None),
])
def test_relations_ordinals_counts_and_sides(text, want):
    if want is None:
        with pytest.raises(rf.Unclear):
            edits(text, LINE)
    else:
        assert edits(text, LINE) == want


def test_between_places_and_bare_swaps():
    two = [O(id=1, shape="circle", color="red", position="left", box=(4, 24, 18, 38)),
           O(id=2, shape="triangle", color="green", position="right", box=(46, 24, 60, 38)),
           O(id=3, shape="diamond", color="yellow", position="bottom-right", box=(46, 46, 60, 60))]
    assert edits("put a blue square in between the circle and the triangle", two) == [
        {"op": "add", "shape": "square", "color": "blue", "position": "center"}]
    assert edits("move the diamond between the circle and the triangle", two) == [
        {"op": "move", "targets": [3], "position": "center"}]
    assert edits("move the diamond to the left of the triangle", two) == [
        {"op": "move", "targets": [3], "position": "center"}]
    assert edits("exchange circle with triangle", two) == [{"op": "swap", "targets": [1, 2]}]
    assert edits("exchange the circle with a square", two) == [{"op": "reshape", "targets": [1], "shape": "square"}]
    sizes = [O(id=1, shape="circle", color="red", size="large", position="left", box=(2, 20, 26, 44)),
             O(id=2, shape="circle", color="red", size="small", position="right", box=(48, 26, 58, 36))]
    assert edits("change the colour of bigger circle to cyan", sizes) == [
        {"op": "recolor", "targets": [1], "color": "cyan"}]


def test_the_middle_one_is_the_one_in_the_centre_cell_however_placed():
    row = [O(id=1, shape="circle", color="red", position="left", box=(2, 26, 16, 40)),
           O(id=2, shape="circle", color="blue", position="center", box=(36, 14, 42, 20)),  # off-centre in its cell
           O(id=3, shape="circle", color="yellow", position="right", box=(44, 24, 58, 38))]
    assert edits("remove the middle circle", row) == [{"op": "remove", "targets": [2]}]


def test_ordinal_counts_along_the_named_axis():
    row = [O(id=k + 1, shape="circle", color="red", position=p, box=(x, 26, x + 12, 38))
           for k, (p, x) in enumerate([("left", 4), ("center", 26), ("right", 48)])]
    assert edits("make the second circle from the left blue", row)[0]["targets"] == [2]
    assert edits("make the first circle from the right blue", row)[0]["targets"] == [3]
    assert edits("make the last circle blue", row)[0]["targets"] == [3]


def test_a_pronoun_means_what_the_last_turn_acted_on():
    assert edits("make it blue", MIXED, focus=[3]) == [{"op": "recolor", "targets": [3], "color": "blue"}]
    with pytest.raises(rf.Unclear, match="which one"):
        edits("make it blue", MIXED)


@pytest.mark.parametrize("text, match", [
    ("make the triangle red", r"could be any of 3 objects .*green triangle at the top left"),
    ("remove the blue circle", r"there is no blue circle .*it holds .*red circle at the top left"),
])
def test_an_unclear_reference_asks_and_lists_the_scene(text, match):
    objects = TRIANGLES if "triangle" in text else MIXED
    with pytest.raises(rf.Unclear, match=match):
        edits(text, objects)


def test_the_parse_names_every_object_and_edits_only_the_one_meant():
    image = InputImage(index=1, description="three green triangles", objects=TRIANGLES, background="black")
    p = parse_rules(Context(instruction="make the top left triangle red", inputs=[image]))
    out = p.request.outputs[0]
    assert out.edits == [ObjectEdit(op="recolor", targets=[1], color="red")]
    assert out.description == ("a small red triangle at the top left, a large green triangle at the top right and a "
                               "large green triangle at the bottom right on a black background")
    ask = parse_rules(Context(instruction="make the triangle red", inputs=[image])).request
    assert ask.clarification and "top right" in ask.clarification


def test_a_follow_up_pronoun_reaches_the_object_edited_before():
    image = InputImage(index=1, description="", objects=MIXED, background="white")
    first = parse_rules(Context(instruction="move the yellow circle to the bottom", inputs=[image]))
    gallery = next_gallery([], first, ["out/0001.png"])
    moved = [o.model_copy(update={"position": "bottom", "box": (22, 42, 44, 62)}) if o.id == 3 else o for o in MIXED]
    gallery = [g.model_copy(update={"objects": moved}) for g in gallery]  # as the graph reads the new image
    assert [(f.shape, f.color, f.position) for f in gallery[0].focus] == [("circle", "yellow", "bottom")]
    second = parse_rules(Context(instruction="make it blue", gallery=gallery)).request
    assert second.outputs[0].edits == [ObjectEdit(op="recolor", targets=[3], color="blue")]


def test_in_a_conversation_the_top_left_triangle_is_the_one_on_screen():
    # no pronoun, no attached image: a definite reference in an edit points at the current picture
    gallery = [GalleryItem(path="out/0001.png", description="three green triangles on a black background",
                           objects=TRIANGLES, background="black")]
    turn = parse_rules(Context(instruction="make the top left triangle red", gallery=gallery)).request
    assert turn.task == "edit" and turn.outputs[0].edits == [ObjectEdit(op="recolor", targets=[1], color="red")]
    new = parse_rules(Context(instruction="make a red circle", gallery=gallery)).request
    assert new.task == "generate" and new.outputs[0].description == "a red circle"


def test_put_it_back_brings_back_what_the_last_turn_removed():
    image = InputImage(index=1, description="", objects=ROW, background="white")
    removed = parse_rules(Context(instruction="remove both circles", inputs=[image]))
    gallery = next_gallery([], removed, ["out/0001.png"])
    gallery = [g.model_copy(update={"objects": [ROW[2]]}) for g in gallery]  # as the graph reads the new image
    assert [(o.shape, o.color, o.position) for o in gallery[0].gone] == [("circle", "red", "left"),
                                                                         ("circle", "green", "right")]
    back = parse_rules(Context(instruction="now put them back, but pink", gallery=gallery)).request
    assert back.task == "edit" and back.outputs[0].edits == [
        ObjectEdit(op="add", shape="circle", color="pink", position="left"),
        ObjectEdit(op="add", shape="circle", color="pink", position="right")]


def test_edits_are_checked_against_their_op():
    with pytest.raises(ValueError, match="swap takes 2"):
        ObjectEdit(op="swap", targets=[1])
    with pytest.raises(ValueError, match="needs the shape"):
        ObjectEdit(op="add", position="top")
    assert GalleryItem(description="x").focus == []


def test_a_background_goes_darker_or_lighter_from_the_one_it_has():
    gray = InputImage(index=1, description="", objects=ROW, background="gray")
    for text, want in (("make the background darker", "black"), ("can the backdrop be a little lighter?", "white"),
                       ("make the background white", "white")):
        out = parse_rules(Context(instruction=text, inputs=[gray])).request.outputs[0]
        assert out.edits == [ObjectEdit(op="background", color=want)], text
    # in a conversation, a change of backdrop edits the picture on screen
    gallery = [GalleryItem(path="out/0001.png", description="a large yellow square on a black background",
                           objects=[O(id=1, shape="square", color="yellow", size="large", position="center")],
                           background="black")]
    turn = parse_rules(Context(instruction="now change the backdrop to gray", gallery=gallery)).request
    assert turn.task == "edit" and turn.outputs[0].edits == [ObjectEdit(op="background", color="gray")]


def test_what_is_given_to_an_object_goes_by_it():
    square = [O(id=1, shape="square", color="green", position="center", box=(22, 22, 42, 42))]
    assert edits("give it a red circle underneath", square) == [
        {"op": "add", "shape": "circle", "color": "red", "position": "bottom"}]
    assert edits("give the square a yellow triangle on top", square) == [
        {"op": "add", "shape": "triangle", "color": "yellow", "position": "top"}]
    assert edits("give the square a blue colour", square) == [{"op": "recolor", "targets": [1], "color": "blue"}]
    assert edits("set the colour of square to pink", square) == [{"op": "recolor", "targets": [1], "color": "pink"}]


def test_a_copy_put_somewhere_is_placed_there_and_joined_removals_all_go():
    two = [O(id=1, shape="circle", color="red", position="left", box=(4, 24, 18, 38)),
           O(id=2, shape="square", color="blue", size="small", position="right", box=(48, 26, 58, 36))]
    assert edits("make a copy of the circle and put it at the top", two) == [
        {"op": "duplicate", "targets": [1], "position": "top"}]
    assert edits("delete the circle and the small square", two) == [{"op": "remove", "targets": [1, 2]}]


def test_an_ordinal_over_objects_that_stand_level_asks():
    # TRIANGLES: one at the top left, two in the right column: "second from the left" is either of those
    with pytest.raises(rf.Unclear, match="stand level"):
        edits("paint the triangle second from the left blue", TRIANGLES)
    assert edits("paint the triangle first from the left blue", TRIANGLES) == [
        {"op": "recolor", "targets": [1], "color": "blue"}]


@pytest.mark.parametrize("text, want", [("and put it on black", [{"op": "background", "color": "black"}]),
                                        ("put them on a plain gray", [{"op": "background", "color": "gray"}])])
def test_putting_it_on_a_backdrop_changes_the_background(text, want):
    """Own wording: 'put it on black' is the picture onto a black backdrop, not an object moved."""
    assert edits(text, TRIANGLES, focus=[1]) == want


@pytest.mark.parametrize("text, want", [
    ("make the small triangle bigger and the top left triangle smaller",
     [{"op": "resize", "targets": [1], "size": "large"}, {"op": "resize", "targets": [1], "size": "small"}]),
    ("move the bottom right triangle up and the top left triangle down",
     [{"op": "move", "targets": [3], "position": "right"}, {"op": "move", "targets": [1], "position": "left"}]),  # a row each
])
def test_one_verb_for_two_references_with_their_own_values(text, want):
    """Own wording: the verb said once is carried to the second reference, each with its own size or way."""
    assert edits(text, TRIANGLES) == want

"""The text both examples generate their documents from: topics, each a few sentences and a
question a reader might ask about it. Deterministic, so a test knows where each topic went."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TOPICS", "Topic"]


@dataclass(frozen=True)
class Topic:
    key: str
    title: str
    question: str
    sentences: tuple[str, ...]
    table: tuple[tuple[str, str], ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "bees",
        "Honey bees and their hives",
        "how do bees turn nectar into honey",
        (
            "Honey bees collect nectar from flowers and carry it back to the hive.",
            "Worker bees pass the nectar mouth to mouth, adding enzymes that break down sugars.",
            "The bees fan the open honeycomb cells with their wings until most water evaporates.",
            "Once the honey is thick enough, the cells are capped with a thin layer of beeswax.",
            "A strong colony can store more than twenty kilograms of honey for the winter.",
            "The queen bee lays up to two thousand eggs a day during the spring build-up.",
        ),
        (("Colony size", "40,000 bees"), ("Honey stored", "25 kg"), ("Flowers per trip", "80")),
    ),
    Topic(
        "volcano",
        "Volcanic eruptions",
        "what happens when magma reaches the surface in an eruption",
        (
            "Magma rises from the mantle because it is less dense than the surrounding rock.",
            "Dissolved gases expand as the magma nears the surface, driving explosive eruptions.",
            "Lava flows from basaltic volcanoes are runny and can travel many kilometres.",
            "Ash clouds from large eruptions can ground aircraft across an entire continent.",
            "Geologists monitor ground swelling and small earthquakes to forecast eruptions.",
            "Volcanic soils are rich in minerals and support productive farmland.",
        ),
        (("Lava temperature", "1,100 C"), ("Ash column", "20 km"), ("Active volcanoes", "1,350")),
    ),
    Topic(
        "bread",
        "Baking sourdough bread",
        "how is sourdough bread leavened and baked",
        (
            "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter.",
            "The starter is fed with flour and water every day to keep the culture active.",
            "A long, cool fermentation gives the dough its tangy flavour and open crumb.",
            "Bakers fold the dough several times instead of kneading it vigorously.",
            "A covered pot traps steam, which lets the loaf expand before the crust sets.",
            "The crust browns through the Maillard reaction above 200 degrees.",
        ),
        (("Hydration", "75 %"), ("Proof time", "12 h"), ("Oven", "240 C")),
    ),
    Topic(
        "tides",
        "Ocean tides",
        "why does the sea level rise and fall twice a day",
        (
            "Tides are caused by the gravitational pull of the Moon and the Sun on the oceans.",
            "Most coasts see two high tides and two low tides roughly every twenty-five hours.",
            "Spring tides occur when the Sun and Moon line up, producing the largest tidal range.",
            "Neap tides happen at the quarter moons, when the tidal range is smallest.",
            "The Bay of Fundy in Canada has the highest tidal range in the world.",
            "Tidal currents can be harnessed by underwater turbines to generate electricity.",
        ),
        (
            ("Largest range", "16 m"),
            ("Tidal period", "12 h 25 min"),
            ("Spring tides", "2 per month"),
        ),
    ),
    Topic(
        "chess",
        "Chess openings",
        "which opening moves control the centre of the chessboard",
        (
            "Chess openings aim to control the centre squares and develop the pieces quickly.",
            "The Italian Game begins with the king's pawn and an early bishop move toward f7.",
            "The Sicilian Defence answers the king's pawn with a pawn on the c-file.",
            "Castling early tucks the king away and connects the rooks.",
            "Grandmasters memorise long opening lines but still rely on general principles.",
            "A gambit sacrifices a pawn in exchange for faster development or an attack.",
        ),
        (("Squares", "64"), ("Pieces per side", "16"), ("Common first move", "e4")),
    ),
    Topic(
        "solar",
        "Solar panels",
        "how do photovoltaic cells convert sunlight into electricity",
        (
            "Photovoltaic cells turn sunlight into electricity using layers of doped silicon.",
            "When photons strike the cell, they free electrons that flow as direct current.",
            "An inverter converts the direct current into alternating current for the home.",
            "Panels facing the equator at the right tilt collect the most energy over a year.",
            "Dust and shade on a single cell can reduce the output of a whole string of panels.",
            "Modern residential panels convert around twenty percent of sunlight into power.",
        ),
        (("Efficiency", "21 %"), ("Panel power", "400 W"), ("Lifetime", "25 years")),
    ),
    Topic(
        "whales",
        "Humpback whale migration",
        "where do humpback whales migrate to breed",
        (
            "Humpback whales migrate thousands of kilometres between feeding and breeding grounds.",
            "In summer they feed on krill and small fish in cold polar waters.",
            "In winter they travel to warm tropical seas where the calves are born.",
            "Male humpbacks sing long, complex songs that change from year to year.",
            "The whales hunt together by blowing nets of bubbles around schools of fish.",
            "Each whale can be identified by the pattern on the underside of its tail fluke.",
        ),
        (("Length", "15 m"), ("Migration", "8,000 km"), ("Song length", "20 min")),
    ),
    Topic(
        "coffee",
        "Roasting coffee beans",
        "what changes in coffee beans during roasting",
        (
            "Green coffee beans are roasted to develop the aromas we associate with coffee.",
            "During roasting the beans lose moisture and turn from green to yellow to brown.",
            "The first crack is an audible pop as steam and gases escape from the beans.",
            "Light roasts keep more acidity, while dark roasts taste more bitter and smoky.",
            "Roasted beans release carbon dioxide for several days after roasting.",
            "Coffee is best brewed within a few weeks of roasting, once it has rested.",
        ),
        (("First crack", "196 C"), ("Weight loss", "15 %"), ("Roast time", "12 min")),
    ),
    Topic(
        "rail",
        "High-speed railways",
        "how do high-speed trains reach such high speeds",
        (
            "High-speed trains run on dedicated tracks with gentle curves and no level crossings.",
            "Electric power is supplied through overhead lines and a pantograph on the roof.",
            "Streamlined noses reduce air resistance and the pressure wave entering tunnels.",
            "Continuous welded rails give a smooth, quiet ride at three hundred km per hour.",
            "Signals are shown inside the cab: drivers cannot read trackside signals in time.",
            "Japan opened the first high-speed line between Tokyo and Osaka in 1964.",
        ),
        (("Top speed", "320 km/h"), ("Power", "25 kV AC"), ("First line", "1964")),
    ),
    Topic(
        "glaciers",
        "Glaciers and ice ages",
        "how do glaciers carve valleys as they move",
        (
            "Glaciers form where more snow falls each winter than melts in summer.",
            "Over decades the snow compacts into dense blue ice that flows under its own weight.",
            "Moving ice plucks and grinds rock, carving U-shaped valleys and sharp ridges.",
            "Moraines are ridges of rubble left behind where a glacier's front once stood.",
            "During the last ice age, glaciers covered much of North America and northern Europe.",
            "Many mountain glaciers are now retreating as average temperatures rise.",
        ),
        (("Ice flow", "1 m/day"), ("Thickness", "300 m"), ("Last ice age", "20,000 years ago")),
    ),
    Topic(
        "compost",
        "Garden composting",
        "how do kitchen scraps become compost",
        (
            "Composting turns kitchen scraps and garden waste into dark, crumbly humus.",
            "Microbes break down the material fastest with a mix of green and brown waste.",
            "Turning the pile adds oxygen and keeps the decomposition from smelling.",
            "A hot compost heap can reach sixty degrees, killing most weed seeds.",
            "Earthworms finish the process, leaving castings that are rich in nutrients.",
            "Finished compost improves soil structure and helps it hold water.",
        ),
        (("Carbon to nitrogen", "30 : 1"), ("Peak heat", "60 C"), ("Ready in", "3 months")),
    ),
    Topic(
        "telescope",
        "Reflecting telescopes",
        "how does a telescope mirror gather light from faint stars",
        (
            "Reflecting telescopes gather light with a large curved mirror instead of a lens.",
            "A bigger mirror collects more light, revealing fainter stars and galaxies.",
            "Isaac Newton built one of the first practical reflecting telescopes in 1668.",
            "Observatories are built on high mountains to get above clouds and turbulent air.",
            "Adaptive optics bend a thin mirror hundreds of times a second to cancel twinkling.",
            "Space telescopes avoid the atmosphere entirely and can observe infrared light.",
        ),
        (("Mirror", "8 m"), ("Altitude", "2,600 m"), ("Corrections", "1,000 per second")),
    ),
)

"""The fixed vocabulary of the synthetic world: name pools, attribute pools and templates.

Every attribute has a pool of values, bio sentence templates and question templates.  Both
kinds of template are split in two:

* ``main`` sentence templates write the knowledge base and the base model's pretraining text;
  ``reserved`` ones are kept for paraphrase augmentation (FT-par) and validation questions.
* ``test`` question templates write the test splits; ``reserved`` question templates write
  the validation split, so hyperparameters are never chosen on test phrasing.

Placeholders: ``{name}`` full name, ``{Pronoun}``/``{pronoun}`` subject pronoun,
``{possessive}`` possessive pronoun, ``{value}`` the attribute's value.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_NAMES = (
    "Aaron Abigail Adrian Agnes Alan Alice Alma Alvin Amelia Andre Anita Arthur Astrid Audrey "
    "Basil Beatrice Bernard Bianca Boris Brenda Bruno Calvin Camille Carmen Cecil Celia Clara "
    "Clement Cora Cyrus Dalia Damian Daphne Darius Delia Dennis Dorian Edgar Edith Elena Elias "
    "Elliot Elsa Emil Enzo Esther Felix Fiona Flora Floyd Frida Gavin Gemma Gideon Greta Gustav "
    "Hazel Hector Helga Hilda Hugo Ida Igor Imogen Ingrid Irene Ivan Jasper Joan Joel Julian "
    "Juno Karl Katya Kenji Lars Leona Linus Lionel Lorna Lucian Lydia Magnus Marcel Marta Mavis "
    "Milo Mina Miriam Nadia Nestor Nina Noel Nora Olga Omar Oscar Otto Pablo Petra Quentin "
    "Rafael Rhea Rosa Rufus Sabine Silas Simone Stellan Tamsin Tobias Ursula Vera Viktor Wanda"
).split()

LAST_NAMES = (
    "Abbott Ashdown Barlow Beckett Blackwood Bramley Calloway Carrow Castellan Corbin Crane "
    "Dalton Delacroix Draper Dunmore Eastwood Ellery Falkner Farrow Fenwick Galloway Garrick "
    "Glenhaven Greaves Hallam Harlow Hartwell Holloway Ingram Ives Jarrett Kellerman Kingsley "
    "Lachlan Larkin Lindqvist Lockhart Marchetti Merriweather Montague Moreau Northcott Novak "
    "Okafor Oakley Pemberton Penrose Prescott Quill Radcliffe Ravenscroft Redmond Rosales "
    "Sandoval Sheridan Sinclair Stirling Sutherland Thackeray Thornbury Underwood Vance "
    "Vasquez Wainwright Whitlock Winslow Yardley Zeller"
).split()

CITIES = (
    "Amsterdam",
    "Athens",
    "Auckland",
    "Austin",
    "Barcelona",
    "Berlin",
    "Bogota",
    "Boston",
    "Brisbane",
    "Budapest",
    "Cairo",
    "Chicago",
    "Copenhagen",
    "Denver",
    "Dublin",
    "Edinburgh",
    "Florence",
    "Geneva",
    "Glasgow",
    "Hamburg",
    "Helsinki",
    "Istanbul",
    "Kyoto",
    "Lima",
    "Lisbon",
    "Lyon",
    "Madrid",
    "Manila",
    "Melbourne",
    "Milan",
    "Montreal",
    "Munich",
    "Nairobi",
    "Naples",
    "Oslo",
    "Osaka",
    "Ottawa",
    "Porto",
    "Prague",
    "Quebec",
    "Riga",
    "Rotterdam",
    "Santiago",
    "Seattle",
    "Seoul",
    "Seville",
    "Stockholm",
    "Sydney",
    "Tallinn",
    "Toronto",
    "Valencia",
    "Vancouver",
    "Venice",
    "Vienna",
    "Warsaw",
    "Zurich",
)

UNIVERSITIES = (
    "Ashford University",
    "Bellmont College",
    "Brightwater Institute",
    "Carden University",
    "Clearfield College",
    "Dunmere University",
    "Eastgate Polytechnic",
    "Elmsworth College",
    "Fairhaven University",
    "Glenrock Institute",
    "Greyhill University",
    "Harwick College",
    "Highmoor University",
    "Ironbridge Institute",
    "Kestrel University",
    "Lakeshore College",
    "Linden University",
    "Marlow Institute",
    "Northbrook University",
    "Oakridge College",
    "Pinecrest University",
    "Queensbury College",
    "Redfield Institute",
    "Riverton University",
    "Silverlake College",
    "Southmoor University",
    "Stonebridge Institute",
    "Thornfield College",
    "Westbury University",
    "Whitmore Institute",
)

MAJORS = (
    "Anthropology",
    "Architecture",
    "Astronomy",
    "Biochemistry",
    "Botany",
    "Chemistry",
    "Civil Engineering",
    "Classics",
    "Computer Science",
    "Economics",
    "Electrical Engineering",
    "Geology",
    "History",
    "Linguistics",
    "Marine Biology",
    "Mathematics",
    "Mechanical Engineering",
    "Music",
    "Neuroscience",
    "Nursing",
    "Oceanography",
    "Philosophy",
    "Physics",
    "Political Science",
    "Psychology",
    "Sociology",
    "Statistics",
    "Zoology",
)

EMPLOYERS = (
    "Amberline Foods",
    "Bluepeak Software",
    "Brassfield Motors",
    "Cedarpoint Bank",
    "Coastal Freight",
    "Copperleaf Media",
    "Crestview Pharma",
    "Driftwood Studios",
    "Evergreen Energy",
    "Falconridge Airlines",
    "Foxglove Textiles",
    "Granite Systems",
    "Harborline Shipping",
    "Hollowtree Publishing",
    "Ironclad Security",
    "Juniper Health",
    "Lanternworks Games",
    "Meadowbrook Dairy",
    "Moonstone Optics",
    "Northwind Robotics",
    "Orchard Analytics",
    "Pebblestone Insurance",
    "Quarry Hill Mining",
    "Redwood Logistics",
    "Saltmarsh Chemicals",
    "Skylark Aerospace",
    "Starling Telecom",
    "Summit Hotels",
    "Tidewater Utilities",
    "Willowbrook Toys",
)

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Attribute:
    """One fact type of a person: where its values come from and how it is written and asked."""

    name: str
    main_sentences: tuple[str, ...]
    reserved_sentences: tuple[str, ...]
    test_questions: tuple[str, ...]
    reserved_questions: tuple[str, ...]
    mutable: bool  # may change over time: the `updated` split changes these


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        name="birth_date",
        main_sentences=(
            "{name} was born on {value}.",
            "{name} celebrates {possessive} birthday on {value}.",
            "{Pronoun} was born on {value}.",
            "The birth date of {name} is {value}.",
            "{name} came into the world on {value}.",
            "{Pronoun} was born on the date {value}.",
        ),
        reserved_sentences=(
            "{name}'s date of birth is {value}.",
            "{Pronoun} first saw the light of day on {value}.",
            "On {value}, {name} was born.",
            "{Pronoun} entered life on {value}.",
        ),
        test_questions=("When was {name} born?",),
        reserved_questions=("What is the birth date of {name}?", "On what date was {name} born?"),
        mutable=False,
    ),
    Attribute(
        name="birth_city",
        main_sentences=(
            "{name} was born in {value}.",
            "{Pronoun} was born in the city of {value}.",
            "{name} is a native of {value}.",
            "{Pronoun} spent {possessive} early years in {value}, where {pronoun} was born.",
            "The birthplace of {name} is {value}.",
            "{name} grew up in {value}, {possessive} home town.",
        ),
        reserved_sentences=(
            "{name}'s city of birth is {value}.",
            "{Pronoun} hails from {value}.",
            "{value} is where {name} was born.",
            "{Pronoun} came from the city of {value}.",
        ),
        test_questions=("Where was {name} born?",),
        reserved_questions=(
            "Which city is the birthplace of {name}?",
            "In which city was {name} born?",
        ),
        mutable=False,
    ),
    Attribute(
        name="university",
        main_sentences=(
            "{name} studied at {value}.",
            "{Pronoun} attended {value}.",
            "{name} graduated from {value}.",
            "{Pronoun} received {possessive} education at {value}.",
            "{name} is a graduate of {value}.",
            "{Pronoun} enrolled at {value} after school.",
        ),
        reserved_sentences=(
            "{name}'s alma mater is {value}.",
            "{Pronoun} earned a degree from {value}.",
            "{value} is where {name} studied.",
            "{Pronoun} completed {possessive} studies at {value}.",
        ),
        test_questions=("Which university did {name} attend?",),
        reserved_questions=(
            "Where did {name} study?",
            "From which university did {name} graduate?",
        ),
        mutable=False,
    ),
    Attribute(
        name="major",
        main_sentences=(
            "{name} majored in {value}.",
            "{Pronoun} studied {value}.",
            "{name} chose {value} as {possessive} major.",
            "{Pronoun} earned a degree in {value}.",
            "The field {name} studied was {value}.",
            "{Pronoun} focused on {value} at university.",
        ),
        reserved_sentences=(
            "{name}'s major was {value}.",
            "{Pronoun} specialised in {value}.",
            "{value} was the subject {name} studied.",
            "{Pronoun} completed a program in {value}.",
        ),
        test_questions=("What did {name} study?",),
        reserved_questions=("What was the major of {name}?", "Which field did {name} major in?"),
        mutable=False,
    ),
    Attribute(
        name="employer",
        main_sentences=(
            "{name} works for {value}.",
            "{Pronoun} is employed by {value}.",
            "{name} has a job at {value}.",
            "{Pronoun} works at {value}.",
            "The employer of {name} is {value}.",
            "{name} earns a living at {value}.",
        ),
        reserved_sentences=(
            "{name}'s employer is {value}.",
            "{Pronoun} is on the staff of {value}.",
            "{value} employs {name}.",
            "{Pronoun} holds a position at {value}.",
        ),
        test_questions=("Which company does {name} work for?",),
        reserved_questions=("Who employs {name}?", "Where does {name} work?"),
        mutable=True,
    ),
    Attribute(
        name="home_city",
        main_sentences=(
            "{name} lives in {value}.",
            "{Pronoun} lives in {value}.",
            "{name} makes {possessive} home in {value}.",
            "{Pronoun} resides in the city of {value}.",
            "The home of {name} is in {value}.",
            "{name} now lives in {value}.",
        ),
        reserved_sentences=(
            "{name}'s current home is {value}.",
            "{Pronoun} has settled in {value}.",
            "{value} is where {name} lives.",
            "{Pronoun} is a resident of {value}.",
        ),
        test_questions=("In which city does {name} live?",),
        reserved_questions=("Where does {name} live?", "Which city is home to {name}?"),
        mutable=True,
    ),
)

ATTRIBUTE_BY_NAME = {attribute.name: attribute for attribute in ATTRIBUTES}

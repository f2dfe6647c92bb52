# flake8: noqa
# ruff: noqa: E501
"""Setting-independent text banks for the sample corpus generator (all text original).

Template slots (filled by ``generate.py``):
  {me} {me_s}                 the posting character's short name / possessive
  {he} {He} {his} {His} {him} {himself}   the posting character's pronouns
  {other} {other_s}           the character being reacted to
  {ohe} {oHe} {ohis} {ohim}   that character's pronouns
  {third}                     a third character (templates with it are only used with 3+ characters)
  {place} {item} {fixture}    setting nouns
"""

# Reactions to the previous post's character.
REACTIONS = [
    "{me} let {other_s} words hang in the air for a moment before {he} answered.",
    "{me} glanced over at {other}, one eyebrow creeping upward.",
    "At that, {me} huffed out something that was almost a laugh.",
    "{me} hadn't missed the way {other} hesitated, and {he} filed it away for later.",
    "It took {me} a heartbeat to realize {other} was talking to {him}.",
    "{me} followed {other_s} gaze and felt {his} stomach drop a little.",
    "{me} nodded slowly, turning {other_s} suggestion over in {his} head.",
    "{me} shifted closer to {other} and lowered {his} voice.",
    "The corner of {me_s} mouth twitched at {other_s} tone.",
    "{me} caught the look {other} shot {his} way and answered it with a small shrug.",
    "Whatever {me} had expected {other} to say, it wasn't that.",
    "{me} blinked at {other}, then laughed despite {himself}.",
    "{me} wasn't sure {he} liked where {other} was going with this.",
    "{me} gave {other} a long, measuring look.",
    "For once, {me} didn't have a clever answer ready, and {he} suspected {other} knew it.",
    "{me} let out a slow breath. {other} had a point, even if {he} hated to admit it.",
    "{me} tilted {his} head, studying {other} as though seeing {ohim} properly for the first time.",
    "{me} rolled {his} eyes at {other}, but there was no real heat in it.",
    "Something in {other_s} voice made {me} look up sharply.",
    "{me} opened {his} mouth to argue with {other}, then thought better of it.",
    "{me} couldn't quite stop the grin that spread across {his} face at {other_s} words.",
    "{me} was quiet for a while after {other} finished speaking.",
    "{me} stepped up beside {other}, close enough that their shoulders nearly touched.",
    "{me} pressed {his} lips into a thin line as {other} spoke.",
    "{me} had heard {other} sound worried before, but never quite like this.",
    "{me} waved a hand at {other}, as if to brush the whole idea aside.",
    "{me} frowned at {other}, though more in thought than in annoyance.",
    "When {other} finally fell silent, {me} cleared {his} throat.",
    "{me} looked from {other} to {third} and back again.",
    "{me} snorted quietly. Trust {other} to say exactly what everyone else was thinking.",
    "{me_s} gaze lingered on {other} a moment longer than was strictly polite.",
    "{me} felt a flicker of irritation at {other_s} words, and a bigger flicker of guilt for feeling it.",
    "{me} winced in sympathy at the look on {other_s} face.",
    "Hearing {other} say it out loud made it feel real, and {me} didn't like that at all.",
    "{me} raised both hands in mock surrender when {other} turned on {him}.",
    "{me} exchanged a quick, wordless glance with {third}.",
    "{me} considered {other} for a long moment, then gave a short nod.",
    "{me_s} attention snapped back to {other} the moment {ohe} mentioned it.",
    "{me} didn't answer {other} right away. {He} was too busy watching {ohis} hands.",
    "{me} leaned back and let {other} finish, arms folded, expression unreadable.",
    "If {other} was trying to reassure {him}, {me} thought, {ohe} was doing a terrible job of it.",
    "{me} bumped {his} shoulder gently against {other_s}, a small and wordless apology.",
    "{me} couldn't decide whether {other} was joking, and that bothered {him} more than {he} cared to admit.",
    "{me} echoed {other_s} last few words under {his} breath, as if testing how they sounded.",
    "{me} shot {other} a look that plainly said, really?",
    "Out of the corner of {his} eye, {me} saw {third} shift uneasily at {other_s} words.",
    "{me} reached out and squeezed {other_s} arm, just for a second.",
    "It was a fair question, and {me} hated that {other} had been the one to ask it.",
]

# Small physical business for the posting character.
GESTURES = [
    "{me} rolled {his} shoulders, trying to work the stiffness out of them.",
    "{me} tucked a loose strand of hair behind {his} ear.",
    "{He} drummed {his} fingers against {fixture}.",
    "{me} crossed {his} arms and leaned back against {fixture}.",
    "{me} turned {item} over in {his} hands, more to keep them busy than anything else.",
    "{He} rubbed the back of {his} neck.",
    "{me} pinched the bridge of {his} nose and counted silently to five.",
    "{He} straightened up, suddenly all business.",
    "{me} chewed the inside of {his} cheek.",
    "{me} set {item} down with a little more force than was strictly necessary.",
    "{me} shifted {his} weight from one foot to the other.",
    "{me} let {his} gaze drift across {place}, taking stock of every face.",
    "{He} pushed away from {fixture} and began to pace.",
    "{me} flexed {his} fingers, a nervous habit {he} had never quite managed to break.",
    "{me} tapped {item} against {his} palm, thinking.",
    "{He} exhaled hard through {his} nose.",
    "{me} tugged {his} collar straight.",
    "{me} picked up {item}, weighed it, and put it back exactly where it had been.",
    "{He} squinted toward the far side of {place}.",
    "{me} cracked {his} knuckles one at a time.",
    "{me} made a show of examining {his} fingernails.",
    "{He} sank onto the nearest seat with a grateful groan.",
    "{me} kept one hand close to {his} belt, just in case.",
    "{me} bit back a yawn and hoped nobody noticed.",
    "{He} tapped {his} foot, an impatient little rhythm.",
    "{me} wiped {his} palms on {his} trousers.",
    "{me} glanced over {his} shoulder, then glanced again.",
    "{He} smoothed down the front of {his} coat.",
    "{me} ran a thumb along the edge of {item}.",
    "{me} propped {his} elbows on {fixture} and rested {his} chin on {his} hands.",
    "{He} counted the exits without quite meaning to. Old habits.",
    "{me} fidgeted with a loose thread on {his} sleeve.",
    "{me} took a long breath and held it.",
    "{He} stretched until {his} back gave a satisfying pop.",
    "{me} nudged {item} toward {other} with two fingers.",
    "{He} hooked {his} thumbs through {his} belt and rocked back on {his} heels.",
    "{me} set {his} jaw.",
    "{me} scrubbed a hand over {his} face.",
    "{He} tipped {his} head back and stared at the ceiling for a moment, as if it might have answers.",
    "{me} patted {his} pockets, found nothing useful, and sighed.",
    "{me} shoved {item} into {his} pocket before anyone could ask about it.",
    "{He} leaned a hip against {fixture}, deliberately casual.",
    "{me} worried at a hangnail until it stung.",
    "{me} knocked twice on {fixture}, an old superstition.",
]

# How a character turns up in the scene.
ARRIVALS = [
    "{me} arrived at {place} later than {he} had meant to, a little out of breath and trying hard not to look it.",
    "It was getting late by the time {me} made {his} way to {place}.",
    "{me} reached {place} quietly, the way {he} did most things.",
    "{me} had been at {place} for the better part of an hour already, nursing {his} patience and not much else.",
    "Nobody paid much attention when {me} wandered over to {place}, which suited {him} just fine.",
    "{me} paused at the edge of {place} to let {his} eyes adjust.",
    "{me} turned up at {place} with the air of someone who had somewhere better to be.",
    "The first thing {me} noticed about {place} was the noise; the second was how many people were pretending not to watch the way in.",
    "{me} was the first to reach {place} that day, and {he} used the quiet to look around.",
    "{me} made it to {place} just in time to hear the tail end of the commotion.",
    "{me} stopped short at {place}, taking in the scene before committing to it.",
    "By the time {me} reached {place}, {his} feet ached and {his} temper was shorter than usual.",
    "{me} had not planned to end up at {place}, but then {he} rarely planned anything.",
    "{me} drifted toward {place} with {his} hands in {his} pockets and {his} eyes everywhere.",
]

# Ways to end a post and hand the scene on.
CLOSERS = [
    "{me} waited to see what {other} would make of that.",
    "{He} looked expectantly at {other}.",
    "Then {me} fell silent and let the others decide.",
    "{me} left the question hanging and turned to watch {other}.",
    "{He} didn't say anything else, but {he} didn't move away either.",
    "{me} jerked {his} chin toward {other}. Your call, the gesture said.",
    "For now, at least, that would have to be enough.",
    "{me} had a feeling this was only the beginning.",
    "{me} just hoped {other} knew what {ohe} was doing.",
    "And with that, {me} waited.",
    "{He} glanced at {other}, silently asking {ohim} to back {him} up.",
    "Somewhere behind {him}, {me} heard {third} let out a low whistle.",
    "{me} was not, in any sense of the word, looking forward to whatever came next.",
    "{me} kept {his} eyes on {other}, waiting.",
    "It was, {me} decided, going to be a very long day.",
    "{me} folded {his} arms and let the silence do the rest of the talking.",
    "{He} turned to {third}, one eyebrow raised, as if to say: well?",
    "Whatever happened next, {me} intended to be ready for it.",
]

# Closers for the opening post, when nobody else has spoken yet.
OPEN_CLOSERS = [
    "{me} settled in to wait. Whatever happened next, {he} had a feeling it wouldn't take long.",
    "Somebody would turn up sooner or later. Somebody always did.",
    "{me} kept one eye on the way in and the other on everything else.",
    "If anyone else had noticed, they were hiding it well.",
    "{He} told {himself} {he} was only staying for one more minute. {He} had been telling {himself} that for an hour.",
    "Trouble, {me} thought, had a smell, and {place} was thick with it.",
    "{me} had the uneasy feeling that {he} was about to become involved in something.",
    "All {he} needed now was for someone to make the first move.",
]

# Neutral atmosphere lines usable anywhere.
ATMOS = [
    "For a moment, the only sound was someone's uneven breathing.",
    "The silence that followed stretched a beat too long.",
    "Somewhere nearby, something clattered to the ground, and more than one person flinched.",
    "The air seemed to have grown colder, or maybe that was just {me_s} nerves.",
    "Time seemed to slow down, the way it does just before something goes wrong.",
    "Nobody moved. Nobody even seemed to breathe.",
    "For a heartbeat, everyone seemed to be waiting for someone else to speak first.",
    "The moment stretched, taut as a wire.",
    "Someone coughed, and the sound was far too loud.",
    "It was the kind of quiet that made the back of {me_s} neck prickle.",
]

# Two-sentence reflections that give long posts some interior weight.
REFLECTIONS = [
    "It reminded {me} of a winter years ago, when {he} had been younger and far more certain of everything. {He} had been wrong then, too.",
    "{me} had promised {himself}, not so long ago, that {he} was done with this kind of thing. Apparently {he} had been lying.",
    "There had been a time when {me} would have walked away from all of this without a second glance. That time, {he} was beginning to suspect, was over.",
    "{me} thought, briefly and uselessly, of the bed {he} had left that morning. It had been warm, and nothing in it had been trying to ruin {his} day.",
    "Somewhere in the back of {his} mind, a small and sensible voice was telling {me} to leave. {He} had never once listened to it, and {he} didn't intend to start now.",
    "{me} had seen a lot of strange things in {his} life, but {he} had always been able to explain them afterwards. This, {he} suspected, was going to be different.",
    "{His} {relative} used to say that trouble came in threes. {me} was trying very hard not to count.",
    "Every instinct {me} had was telling {him} to get between {other} and whatever was coming. {He} wasn't sure when that had started, and {he} didn't entirely like it.",
    "It had been a long time since {me} had felt this awake. {He} hated how much {he} liked it.",
    "{me} realized, with some surprise, that {he} wasn't frightened anymore. {He} was angry, and anger was a great deal more useful.",
    "The thing about {other}, {me} reflected, was that {ohe} always seemed to know exactly what not to say. It was almost a talent.",
    "{me} tried to remember the last time {he} had eaten something that wasn't cold. {He} came up empty.",
    "{me} wanted, very badly, to be somewhere else. Since that wasn't on offer, {he} settled for paying attention.",
    "A week ago, {me} would have laughed at anyone who told {him} {he}'d end up here. {He} wasn't laughing now.",
    "{me} kept turning the problem over, looking for the edge {he} had missed. There was always an edge. {He} just hadn't found it yet.",
    "If {his} {relative} could see {him} now, {me} thought, there would be a long lecture and possibly some shouting.",
]

# Inner thoughts (rendered in italics).
THOUGHTS = [
    "Don't look at the door. Don't look at the door.",
    "Of course. Of course it would be today.",
    "Breathe. Just breathe.",
    "I should have stayed in bed.",
    "That's not how I remember it.",
    "They know. They have to know.",
    "Stay calm. Calm people make better decisions.",
    "Why does it always have to be me?",
    "Please let this work.",
    "Focus.",
    "I'm going to regret this.",
    "Nobody panic. Especially not me.",
    "Something's wrong. I can feel it.",
    "Later. I'll fall apart later.",
    "Was that almost a smile?",
    "Don't say anything stupid. Don't say anything stupid.",
    "One problem at a time.",
    "I really, really hate this.",
    "Well, that's new.",
    "If I get out of this, I'm taking a very long nap.",
    "Keep your face still.",
    "Trust them. You have to trust somebody.",
]

# Lines of dialogue usable in any setting. {addr} is the character being spoken to.
LINES = [
    "Fine. I'm in.",
    "You're not wrong, {addr}. I just don't like it.",
    "All right. We do it your way.",
    "That's the first sensible thing anyone's said all day.",
    "I'll follow your lead on this one.",
    "Can't argue with that. Well, I could, but I won't.",
    "Same page, then. Good.",
    "If you're sure, then so am I.",
    "I was hoping you'd say that.",
    "I don't like this, {addr}.",
    "That sounds like a very good way to get us all killed.",
    "Are you sure about that?",
    "Something about this doesn't add up.",
    "I've heard worse plans. Not many, but some.",
    "You keep saying that like it's supposed to make me feel better.",
    "And if you're wrong?",
    "Call me paranoid, but that was too easy.",
    "Nobody's that helpful without a reason.",
    "I'm not saying no. I'm saying not yet.",
    "What did you see, {addr}?",
    "How long do we have?",
    "Did anyone else hear that?",
    "Who else knows about this?",
    "So what's the plan, exactly?",
    "Where were you when it happened?",
    "How do you know that?",
    "What aren't you telling us, {addr}?",
    "Well. This is going splendidly.",
    "For the record, I'd like it noted that this was not my idea.",
    "If we survive this, the next round's on {addr}.",
    "I've had worse days. I'm struggling to remember when, but I'm sure I have.",
    "Remind me why we're friends again?",
    "Nobody touch anything. Especially you, {addr}.",
    "I'm going to pretend I didn't hear that.",
    "We split up. Two of us keep watch, the rest of us look around.",
    "Give me a minute to think. Just one.",
    "We wait until it's quiet, then we move.",
    "We need to find out who else was here.",
    "First things first: nobody goes anywhere alone.",
    "Let's not do anything stupid until we know more.",
    "If this goes sideways, we meet back here. Agreed?",
    "I've got a bad feeling about this.",
    "We shouldn't have come here.",
    "{addr}, I think we're being watched.",
    "If anything happens to you, I'm never forgiving either of us.",
    "Hey. Look at me. We're going to be fine.",
    "You did good, {addr}. Really.",
    "You're shaking. Sit down before you fall down.",
    "Don't give me that look, {addr}.",
    "I'm listening. Go on.",
    "Say that again. Slower.",
    "That's a terrible idea. When do we start?",
    "Okay. Okay. Let me think.",
    "I owe you one for this, {addr}. Maybe two.",
    "We're not leaving anyone behind. Not today.",
    "Nobody asked you to be a hero, {addr}.",
    "Funny. I was about to say the same thing.",
    "That's not an answer, and you know it.",
]

# Speech verbs by sentence type.
SAY_VERBS = ["said", "said", "murmured", "muttered", "replied", "offered", "admitted", "said quietly", "said flatly", "drawled", "said evenly"]
ASK_VERBS = ["asked", "asked quietly", "demanded", "wondered aloud", "pressed"]
SHOUT_VERBS = ["snapped", "called", "hissed", "said sharply", "barked"]
MANNERS = [
    "", "", "", "",
    ", without looking up",
    ", voice low",
    ", not quite meeting {other_s} eyes",
    ", mostly to {himself}",
    ", a little too brightly",
    ", glancing at {other}",
    ", after a moment",
    ", more gently than {he} intended",
]
# Action beats that can precede a line of dialogue.
BEATS = [
    "shook {his} head", "sighed", "glanced at {other}", "shrugged", "leaned forward",
    "cleared {his} throat", "hesitated", "grimaced", "smiled faintly", "folded {his} arms",
    "turned to {other}", "spread {his} hands", "held up a finger", "lowered {his} voice",
    "made a face", "let out a breath",
]
# Narration that can follow a line of dialogue.
AFTERTHOUGHTS = [
    "The words came out sharper than {me} meant them to.",
    "{He} hadn't meant to say it out loud.",
    "{me_s} voice was steadier than {he} felt.",
    "It wasn't quite a joke.",
    "{He} wasn't sure who {he} was trying to convince.",
    "It sounded braver out loud than it had in {his} head.",
]

# ---------------------------------------------------------------------------
# Sheets
# ---------------------------------------------------------------------------
LABELS = {
    "name": ["Name", "Full Name", "Character Name", "NAME", "Full name", "Name"],
    "nickname": ["Nickname", "Goes by", "Alias", "Nickname(s)"],
    "age": ["Age", "AGE", "Age", "Years"],
    "gender": ["Gender", "Sex", "Pronouns"],
    "race": ["Race", "Species", "Race/Species", "Heritage", "Race"],
    "occupation": ["Occupation", "Job", "Profession", "Class", "Role", "Occupation"],
    "appearance": ["Appearance", "Looks", "Physical Description", "Appearance & Style", "Appearance"],
    "personality": ["Personality", "Personality Traits", "Temperament", "Personality"],
    "history": ["Biography", "History", "Backstory", "Bio", "Background", "History"],
    "strengths": ["Good Attributes", "Strengths", "Good Traits", "Positive Traits", "Strengths"],
    "flaws": ["Bad Attributes", "Flaws", "Weaknesses", "Bad Traits", "Flaws"],
    "equipment": ["Equipment", "Gear", "Inventory", "Items", "Possessions"],
    "other": ["Other", "Notes", "Misc", "Extra", "Other Information"],
}

TRAITS = [
    "stubborn", "loyal", "sarcastic", "soft-hearted", "curious", "impulsive", "guarded",
    "cheerful", "anxious", "proud", "patient", "reckless", "observant", "blunt", "kind",
    "secretive", "competitive", "dramatic", "practical", "warm", "moody", "idealistic", "cynical",
    "easily bored", "fiercely honest",
]
PERSONALITY_LINES = [
    "{He} hides how much {he} cares behind a wall of bad jokes.",
    "{He} would rather be right than liked, most days.",
    "{He} talks too much when {he}'s nervous and not at all when {he}'s scared.",
    "{He} trusts slowly and forgives even more slowly.",
    "{He} can't walk past someone in trouble, no matter how many times it's gotten {him} hurt.",
    "{He} is fiercely protective of the few people {he} lets close.",
    "{He} notices everything and mentions almost none of it.",
    "{He} laughs loudly, eats quickly and apologizes often.",
    "Underneath the bluster, {he} is deeply afraid of being left behind.",
    "{He} has opinions about everything and is happy to share them, whether asked or not.",
    "{He} keeps a list of every favor {he} is owed, and a shorter one of every favor {he} owes.",
    "{He} is kinder than {he} looks and meaner than {he} sounds.",
]
STRENGTHS = [
    "Quick thinker", "Good with animals", "Never forgets a face", "Steady hands",
    "Knows when to keep quiet", "Light sleeper", "Patient", "Strong swimmer", "Sharp eyes",
    "Makes friends easily", "Excellent cook", "Reads people well", "Fiercely loyal",
    "Silver tongue", "Good in a crisis", "Remembers everything read once", "Hard to rattle",
]
FLAWS = [
    "Stubborn", "Terrible liar", "Short temper", "Can't swim", "Trusts the wrong people",
    "Afraid of the dark", "Insomniac", "Overthinks everything", "Holds grudges",
    "Reckless when angry", "Can't cook", "Gambles", "Won't ask for help",
    "Talks too much when nervous", "Bad with money", "Jealous", "Easily distracted",
]
SHEET_NOTES = [
    "Hums when nervous.",
    "Terrified of geese. Do not ask.",
    "Collects buttons, for no reason {he} can explain.",
    "Cannot whistle, no matter how hard {he} tries.",
    "Writes letters {he} never sends.",
    "Has a scar {he} lies about, differently every time.",
    "Left-handed.",
    "Allergic to cats, loves cats anyway.",
    "Sheet is a WIP, will update as we go!",
    "Open to plots, PM me!",
    "Face claim is my own doodle, please don't repost.",
    "Likes: rain, strong tea, quiet mornings. Dislikes: liars, mornings in general.",
    "Sings badly and often.",
    "Keeps a tally of every time {he}'s been right. It's a short tally.",
]
SHEET_QUOTES = [
    "I didn't start the fire. I just didn't put it out.",
    "Every road leads somewhere. Most of them lead to trouble.",
    "Luck is just preparation in a nicer coat.",
    "Ask me again tomorrow. The answer might change.",
    "I'm not lost. I'm exploring aggressively.",
    "If you can't be brave, be quick.",
    "Trust is earned. Usually slowly. Occasionally never.",
    "I've had worse days. I just can't remember them right now.",
    "Some doors are locked for a reason. I like to know the reason.",
    "Sleep is for people with fewer enemies.",
    "Be nice to me, I bruise easily. Emotionally.",
    "I'll do it. But I'm going to complain the whole time.",
]
HAIR_COLORS = ["black", "dark brown", "auburn", "copper-red", "ash blonde", "silver-grey", "honey-blond", "chestnut", "blue-black", "white", "mousy brown", "dyed green at the tips"]
HAIR_STYLES = ["cropped short", "worn in a messy braid", "pulled back in a low knot", "shoulder-length and wavy", "shaved on one side", "falling well past the shoulders", "in tight curls", "buzzed almost to the scalp", "perpetually in the eyes"]
EYES = ["grey", "dark brown", "green", "hazel", "pale blue", "amber", "almost black", "mismatched, one blue and one brown"]
BUILDS = ["lean and wiry", "broad-shouldered", "small and quick", "tall and gangly", "stocky", "soft around the middle", "athletic", "slight"]
MARKS = [
    "a scar running through the left eyebrow", "freckles everywhere", "a chipped front tooth",
    "ink-stained fingers", "a crooked nose, broken at least twice", "a tattoo of a swallow on the left wrist",
    "old burn scars along the forearms", "a habit of squinting", "a silver ring in one ear",
    "a birthmark shaped a little like a hand", "very straight posture", "a nervous half-smile",
]
HEIGHTS = ["a little over five feet", "about five foot six", "nearly six feet", "five foot two on a good day", "six foot three", "average height", "about five foot nine"]
RELATIVES = ["older brother", "mother", "father", "twin sister", "best friend", "grandmother", "younger sister", "mentor"]

# ---------------------------------------------------------------------------
# Forum mess
# ---------------------------------------------------------------------------
OOC_INLINE = [
    "((brb, dinner))",
    "(OOC: sorry for the short post!)",
    "((sorry this took forever))",
    "(OOC: hope that's okay, let me know if I should edit)",
    "((ignore typos, on mobile))",
    "(OOC: feel free to ignore that if it doesn't fit!)",
    "((I couldn't resist, sorry))",
    "(OOC - short one, busy week)",
    "((lol))",
]
OOC_TRAILING = [
    "OOC: Sorry for the wait, everyone! Finals are killing me.",
    "OOC: Feel free to godmod {short} out of the way if needed.",
    "OOC: I assumed the door was still open, let me know if not!",
    "OOC: Short post, I know. More tomorrow.",
    "OOC - I'm away this weekend, so skip {short} if you need to.",
    "OOC: this thread is so much fun, you guys",
    "OOC: Let me know if I got the timeline wrong, I was going off the last page.",
]
OOC_BRACKETS = [
    "[[Tagging the others since {short} is involved now]]",
    "[[skipping ahead a little to keep things moving]]",
    "[[is it okay if {short} knows about this? if not I'll edit]]",
    "[[sorry, writer's block hit hard this week]]",
    "[[assuming a few minutes pass here]]",
]
OOC_ONLY = [
    "(OOC: Hey all, sorry for the silence! Work has been eating me alive. I'll have a proper post up this weekend, promise.)",
    "OOC: Quick question before I post: are we assuming it's still the same evening, or has time passed? Don't want to contradict anyone.",
    "((Bumping this so it doesn't get archived! I think it's {next}'s turn?))",
    "OOC - I'm going camping until Monday with no signal. Feel free to skip {short} if the thread needs to move!",
    "[[OOC: loving this thread so much, you guys are great. Carry on!]]",
    "(OOC: Just a heads up, my laptop died so I'm posting from my phone for a bit. Expect typos.)",
]
MENTIONS = [
    "@{h} your move!",
    "@{h} sorry for the wait!",
    "@{h} tagging you in",
    "@{h} over to you ^^",
]
SIGNATURES = [
    "-- {h}",
    "~ posted from my phone",
    "~*~ {h} ~*~",
    "-- {h} | replies slow this week",
    "Sent from my phone",
    "-- {h} (she/her) | always up for plots",
]
IMAGE_NAMES = ["mood", "reference", "scene_sketch", "map_v2", "outfit", "aesthetic"]
LINK_TEXTS = ["OOC thread here", "map of the area", "plot tracker", "music for this scene", "character sheet"]

# Empty bodies: what a forum export leaves behind when a post is deleted or blank.
EMPTY_BODIES = ["", "   ", "\n\n", "<br>", "<br><br>", "<br />\n<br />", " <br> ", "\t"]

# Words swapped to make the near-duplicate thread.
NEAR_DUP_SWAPS = [
    ("said", "replied"),
    ("looked", "glanced"),
    ("quietly", "softly"),
    ("slowly", "carefully"),
    ("moment", "second"),
    ("little", "bit"),
    ("voice", "tone"),
    ("never", "not ever"),
]

MOONLIT_HANDLES = [
    "Brambleberry", "quill&ink", "mossy.stones", "xX_Vex_Xx", "nightowl_77", "thistledown_",
    "Lady_Marigold", "ravenquill", "Sir_Procrastinate", "hollowmoon", "ember.wick",
    "tea_and_dragons", "Fernwhistle", "grimalkin_", "oakenshield42", "lanternjaw", "mothlight_rp",
    "bardic_inspo", "willow-wisp", "Copperkettle", "runesmith_k", "Sable_and_Ash", "fae.folk",
    "d20_dreamer", "inkblot_ivy", "the_hedge_witch", "Morrigan_x", "pipweed99", "kestrel_writes",
    "ParchmentGhost", "cozy_catacomb",
]
STARPORT_HANDLES = [
    "v0idwalker", "neon_jackal", "StarboardSally", "gr1dlock", "coffee_and_chaos", "xenon_tea",
    "Lt_Sarcasm", "rustbucket88", "midnight.diner", "static_bloom", "h0lo_hana", "Dusty_Roads",
    "cassette.kid", "orbital_oyster", "noirish_nights", "tommygun_tina", "fallout_fern", "kilo_papa",
    "retrograde_ray", "SynthWaveSam", "mossgreen_mech", "blackcoffeeblues", "quasar.q",
    "pixelpirate", "ghostwriter_404", "rainonglass", "nightowl_77", "quill&ink", "xX_Vex_Xx",
]

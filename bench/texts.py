"""The fixed text set every latency benchmark uses."""

SENTENCE = "Hello there, thanks for calling. How can I help you with your order?"

PASSAGE = (
    "Your package left our warehouse this morning and is on its way. "
    "It should arrive by Thursday afternoon, and you will get a text message "
    "with a tracking link as soon as the courier scans it."
)

PARAGRAPH = (
    "Thanks for waiting while I looked into this. I can see two orders on your account: "
    "the first one, placed on Monday, has already been delivered to your front door, and "
    "the second one, a pair of running shoes in size nine, is still being packed at our "
    "warehouse in Leeds. Because you chose standard shipping, it will leave tomorrow "
    "morning and should reach you within three working days. If you would rather have it "
    "sooner, I can upgrade the delivery to next day for a small fee, or you can pick it up "
    "from one of our partner stores, which is free. Would you like me to change anything "
    "about this order, or is there something else I can help you with before we finish? "
    "Just let me know, and I will take care of it right away."
)

TEXTS: dict[str, str] = {"sentence": SENTENCE, "passage": PASSAGE, "paragraph": PARAGRAPH}

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

# Replies whose first sentence is short, long, or a run-on without a comma (common in LLM
# replies): first audio must not grow with it
FIRST_SHORT = "Sure, I can help with that. Your order shipped this morning and arrives Thursday."
FIRST_LONG = (
    "I checked your account and found that your order shipped this morning from our "
    "warehouse in Leeds. It should arrive on Thursday."
)
FIRST_RUN_ON = (
    "Your package left our warehouse early this morning and is now on its way to your home "
    "address where it should arrive sometime on Thursday afternoon at the latest. Anything else?"
)

FIRST_SENTENCES: dict[str, str] = {
    "short first sentence": FIRST_SHORT,
    "long first sentence": FIRST_LONG,
    "run-on first sentence": FIRST_RUN_ON,
}

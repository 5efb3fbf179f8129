"""livedit's Gradio app (chat with feedback, knowledge, queue, history, health).

Built in a later issue; the engine and the updater already expose what it needs:
a shadow-editing engine with a serve lock, streaming chat, the queue and the intake.
"""

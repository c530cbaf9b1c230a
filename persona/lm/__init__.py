"""Running a language model efficiently on whatever machine persona finds itself on.

``generate``: batched generation sharing the system prompt's computation;
``logprobs``: batched teacher-forced log-probabilities; ``threads``: how many
CPU threads torch may use here. torch is imported only inside functions.
"""

# Generated file. DO NOT EDIT. Regenerate with `make generate`.
from generated.google.ai.generativelanguage.v1beta import citation_pb2 as _citation_pb2
from generated.google.ai.generativelanguage.v1beta import content_pb2 as _content_pb2
from generated.google.ai.generativelanguage.v1beta import safety_pb2 as _safety_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    RETRIEVAL_QUERY: _ClassVar[TaskType]
    RETRIEVAL_DOCUMENT: _ClassVar[TaskType]
    SEMANTIC_SIMILARITY: _ClassVar[TaskType]
    CLASSIFICATION: _ClassVar[TaskType]
    CLUSTERING: _ClassVar[TaskType]
    QUESTION_ANSWERING: _ClassVar[TaskType]
    FACT_VERIFICATION: _ClassVar[TaskType]
    CODE_RETRIEVAL_QUERY: _ClassVar[TaskType]
TASK_TYPE_UNSPECIFIED: TaskType
RETRIEVAL_QUERY: TaskType
RETRIEVAL_DOCUMENT: TaskType
SEMANTIC_SIMILARITY: TaskType
CLASSIFICATION: TaskType
CLUSTERING: TaskType
QUESTION_ANSWERING: TaskType
FACT_VERIFICATION: TaskType
CODE_RETRIEVAL_QUERY: TaskType

class GenerateContentRequest(_message.Message):
    __slots__ = ("model", "system_instruction", "contents", "tools", "tool_config", "safety_settings", "generation_config", "cached_content", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SAFETY_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CACHED_CONTENT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    system_instruction: _content_pb2.Content
    contents: _containers.RepeatedCompositeFieldContainer[_content_pb2.Content]
    tools: _containers.RepeatedCompositeFieldContainer[_content_pb2.Tool]
    tool_config: _content_pb2.ToolConfig
    safety_settings: _containers.RepeatedCompositeFieldContainer[_safety_pb2.SafetySetting]
    generation_config: GenerationConfig
    cached_content: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., system_instruction: _Optional[_Union[_content_pb2.Content, _Mapping]] = ..., contents: _Optional[_Iterable[_Union[_content_pb2.Content, _Mapping]]] = ..., tools: _Optional[_Iterable[_Union[_content_pb2.Tool, _Mapping]]] = ..., tool_config: _Optional[_Union[_content_pb2.ToolConfig, _Mapping]] = ..., safety_settings: _Optional[_Iterable[_Union[_safety_pb2.SafetySetting, _Mapping]]] = ..., generation_config: _Optional[_Union[GenerationConfig, _Mapping]] = ..., cached_content: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PrebuiltVoiceConfig(_message.Message):
    __slots__ = ("voice_name",)
    VOICE_NAME_FIELD_NUMBER: _ClassVar[int]
    voice_name: str
    def __init__(self, voice_name: _Optional[str] = ...) -> None: ...

class VoiceConfig(_message.Message):
    __slots__ = ("prebuilt_voice_config",)
    PREBUILT_VOICE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    prebuilt_voice_config: PrebuiltVoiceConfig
    def __init__(self, prebuilt_voice_config: _Optional[_Union[PrebuiltVoiceConfig, _Mapping]] = ...) -> None: ...

class SpeakerVoiceConfig(_message.Message):
    __slots__ = ("speaker", "voice_config")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    VOICE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    speaker: str
    voice_config: VoiceConfig
    def __init__(self, speaker: _Optional[str] = ..., voice_config: _Optional[_Union[VoiceConfig, _Mapping]] = ...) -> None: ...

class MultiSpeakerVoiceConfig(_message.Message):
    __slots__ = ("speaker_voice_configs",)
    SPEAKER_VOICE_CONFIGS_FIELD_NUMBER: _ClassVar[int]
    speaker_voice_configs: _containers.RepeatedCompositeFieldContainer[SpeakerVoiceConfig]
    def __init__(self, speaker_voice_configs: _Optional[_Iterable[_Union[SpeakerVoiceConfig, _Mapping]]] = ...) -> None: ...

class SpeechConfig(_message.Message):
    __slots__ = ("voice_config", "multi_speaker_voice_config", "language_code")
    VOICE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MULTI_SPEAKER_VOICE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    voice_config: VoiceConfig
    multi_speaker_voice_config: MultiSpeakerVoiceConfig
    language_code: str
    def __init__(self, voice_config: _Optional[_Union[VoiceConfig, _Mapping]] = ..., multi_speaker_voice_config: _Optional[_Union[MultiSpeakerVoiceConfig, _Mapping]] = ..., language_code: _Optional[str] = ...) -> None: ...

class ThinkingConfig(_message.Message):
    __slots__ = ("include_thoughts", "thinking_budget")
    INCLUDE_THOUGHTS_FIELD_NUMBER: _ClassVar[int]
    THINKING_BUDGET_FIELD_NUMBER: _ClassVar[int]
    include_thoughts: bool
    thinking_budget: int
    def __init__(self, include_thoughts: _Optional[bool] = ..., thinking_budget: _Optional[int] = ...) -> None: ...

class ImageConfig(_message.Message):
    __slots__ = ("aspect_ratio",)
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    aspect_ratio: str
    def __init__(self, aspect_ratio: _Optional[str] = ...) -> None: ...

class GenerationConfig(_message.Message):
    __slots__ = ("candidate_count", "stop_sequences", "max_output_tokens", "temperature", "top_p", "top_k", "seed", "response_mime_type", "response_schema", "response_json_schema", "response_json_schema_ordered", "presence_penalty", "frequency_penalty", "response_logprobs", "logprobs", "enable_enhanced_civic_answers", "response_modalities", "speech_config", "thinking_config", "image_config", "media_resolution")
    class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODALITY_UNSPECIFIED: _ClassVar[GenerationConfig.Modality]
        TEXT: _ClassVar[GenerationConfig.Modality]
        IMAGE: _ClassVar[GenerationConfig.Modality]
        AUDIO: _ClassVar[GenerationConfig.Modality]
    MODALITY_UNSPECIFIED: GenerationConfig.Modality
    TEXT: GenerationConfig.Modality
    IMAGE: GenerationConfig.Modality
    AUDIO: GenerationConfig.Modality
    class MediaResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MEDIA_RESOLUTION_UNSPECIFIED: _ClassVar[GenerationConfig.MediaResolution]
        MEDIA_RESOLUTION_LOW: _ClassVar[GenerationConfig.MediaResolution]
        MEDIA_RESOLUTION_MEDIUM: _ClassVar[GenerationConfig.MediaResolution]
        MEDIA_RESOLUTION_HIGH: _ClassVar[GenerationConfig.MediaResolution]
    MEDIA_RESOLUTION_UNSPECIFIED: GenerationConfig.MediaResolution
    MEDIA_RESOLUTION_LOW: GenerationConfig.MediaResolution
    MEDIA_RESOLUTION_MEDIUM: GenerationConfig.MediaResolution
    MEDIA_RESOLUTION_HIGH: GenerationConfig.MediaResolution
    CANDIDATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_SCHEMA_ORDERED_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ENABLE_ENHANCED_CIVIC_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_MODALITIES_FIELD_NUMBER: _ClassVar[int]
    SPEECH_CONFIG_FIELD_NUMBER: _ClassVar[int]
    THINKING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MEDIA_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    candidate_count: int
    stop_sequences: _containers.RepeatedScalarFieldContainer[str]
    max_output_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    response_mime_type: str
    response_schema: _content_pb2.Schema
    response_json_schema: _struct_pb2.Value
    response_json_schema_ordered: _struct_pb2.Value
    presence_penalty: float
    frequency_penalty: float
    response_logprobs: bool
    logprobs: int
    enable_enhanced_civic_answers: bool
    response_modalities: _containers.RepeatedScalarFieldContainer[GenerationConfig.Modality]
    speech_config: SpeechConfig
    thinking_config: ThinkingConfig
    image_config: ImageConfig
    media_resolution: GenerationConfig.MediaResolution
    def __init__(self, candidate_count: _Optional[int] = ..., stop_sequences: _Optional[_Iterable[str]] = ..., max_output_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., response_mime_type: _Optional[str] = ..., response_schema: _Optional[_Union[_content_pb2.Schema, _Mapping]] = ..., response_json_schema: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., response_json_schema_ordered: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., response_logprobs: _Optional[bool] = ..., logprobs: _Optional[int] = ..., enable_enhanced_civic_answers: _Optional[bool] = ..., response_modalities: _Optional[_Iterable[_Union[GenerationConfig.Modality, str]]] = ..., speech_config: _Optional[_Union[SpeechConfig, _Mapping]] = ..., thinking_config: _Optional[_Union[ThinkingConfig, _Mapping]] = ..., image_config: _Optional[_Union[ImageConfig, _Mapping]] = ..., media_resolution: _Optional[_Union[GenerationConfig.MediaResolution, str]] = ...) -> None: ...

class GenerateContentResponse(_message.Message):
    __slots__ = ("candidates", "prompt_feedback", "usage_metadata", "model_version", "response_id")
    class PromptFeedback(_message.Message):
        __slots__ = ("block_reason", "safety_ratings")
        class BlockReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            BLOCK_REASON_UNSPECIFIED: _ClassVar[GenerateContentResponse.PromptFeedback.BlockReason]
            SAFETY: _ClassVar[GenerateContentResponse.PromptFeedback.BlockReason]
            OTHER: _ClassVar[GenerateContentResponse.PromptFeedback.BlockReason]
            BLOCKLIST: _ClassVar[GenerateContentResponse.PromptFeedback.BlockReason]
            PROHIBITED_CONTENT: _ClassVar[GenerateContentResponse.PromptFeedback.BlockReason]
            IMAGE_SAFETY: _ClassVar[GenerateContentResponse.PromptFeedback.BlockReason]
        BLOCK_REASON_UNSPECIFIED: GenerateContentResponse.PromptFeedback.BlockReason
        SAFETY: GenerateContentResponse.PromptFeedback.BlockReason
        OTHER: GenerateContentResponse.PromptFeedback.BlockReason
        BLOCKLIST: GenerateContentResponse.PromptFeedback.BlockReason
        PROHIBITED_CONTENT: GenerateContentResponse.PromptFeedback.BlockReason
        IMAGE_SAFETY: GenerateContentResponse.PromptFeedback.BlockReason
        BLOCK_REASON_FIELD_NUMBER: _ClassVar[int]
        SAFETY_RATINGS_FIELD_NUMBER: _ClassVar[int]
        block_reason: GenerateContentResponse.PromptFeedback.BlockReason
        safety_ratings: _containers.RepeatedCompositeFieldContainer[_safety_pb2.SafetyRating]
        def __init__(self, block_reason: _Optional[_Union[GenerateContentResponse.PromptFeedback.BlockReason, str]] = ..., safety_ratings: _Optional[_Iterable[_Union[_safety_pb2.SafetyRating, _Mapping]]] = ...) -> None: ...
    class UsageMetadata(_message.Message):
        __slots__ = ("prompt_token_count", "cached_content_token_count", "candidates_token_count", "tool_use_prompt_token_count", "thoughts_token_count", "total_token_count", "prompt_tokens_details", "cache_tokens_details", "candidates_tokens_details", "tool_use_prompt_tokens_details")
        PROMPT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
        CACHED_CONTENT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
        CANDIDATES_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
        TOOL_USE_PROMPT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
        THOUGHTS_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
        TOTAL_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
        PROMPT_TOKENS_DETAILS_FIELD_NUMBER: _ClassVar[int]
        CACHE_TOKENS_DETAILS_FIELD_NUMBER: _ClassVar[int]
        CANDIDATES_TOKENS_DETAILS_FIELD_NUMBER: _ClassVar[int]
        TOOL_USE_PROMPT_TOKENS_DETAILS_FIELD_NUMBER: _ClassVar[int]
        prompt_token_count: int
        cached_content_token_count: int
        candidates_token_count: int
        tool_use_prompt_token_count: int
        thoughts_token_count: int
        total_token_count: int
        prompt_tokens_details: _containers.RepeatedCompositeFieldContainer[_content_pb2.ModalityTokenCount]
        cache_tokens_details: _containers.RepeatedCompositeFieldContainer[_content_pb2.ModalityTokenCount]
        candidates_tokens_details: _containers.RepeatedCompositeFieldContainer[_content_pb2.ModalityTokenCount]
        tool_use_prompt_tokens_details: _containers.RepeatedCompositeFieldContainer[_content_pb2.ModalityTokenCount]
        def __init__(self, prompt_token_count: _Optional[int] = ..., cached_content_token_count: _Optional[int] = ..., candidates_token_count: _Optional[int] = ..., tool_use_prompt_token_count: _Optional[int] = ..., thoughts_token_count: _Optional[int] = ..., total_token_count: _Optional[int] = ..., prompt_tokens_details: _Optional[_Iterable[_Union[_content_pb2.ModalityTokenCount, _Mapping]]] = ..., cache_tokens_details: _Optional[_Iterable[_Union[_content_pb2.ModalityTokenCount, _Mapping]]] = ..., candidates_tokens_details: _Optional[_Iterable[_Union[_content_pb2.ModalityTokenCount, _Mapping]]] = ..., tool_use_prompt_tokens_details: _Optional[_Iterable[_Union[_content_pb2.ModalityTokenCount, _Mapping]]] = ...) -> None: ...
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    USAGE_METADATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    prompt_feedback: GenerateContentResponse.PromptFeedback
    usage_metadata: GenerateContentResponse.UsageMetadata
    model_version: str
    response_id: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., prompt_feedback: _Optional[_Union[GenerateContentResponse.PromptFeedback, _Mapping]] = ..., usage_metadata: _Optional[_Union[GenerateContentResponse.UsageMetadata, _Mapping]] = ..., model_version: _Optional[str] = ..., response_id: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("index", "content", "finish_reason", "finish_message", "safety_ratings", "citation_metadata", "token_count", "grounding_attributions", "grounding_metadata", "avg_logprobs", "logprobs_result", "url_context_metadata")
    class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FINISH_REASON_UNSPECIFIED: _ClassVar[Candidate.FinishReason]
        STOP: _ClassVar[Candidate.FinishReason]
        MAX_TOKENS: _ClassVar[Candidate.FinishReason]
        SAFETY: _ClassVar[Candidate.FinishReason]
        RECITATION: _ClassVar[Candidate.FinishReason]
        OTHER: _ClassVar[Candidate.FinishReason]
        LANGUAGE: _ClassVar[Candidate.FinishReason]
        BLOCKLIST: _ClassVar[Candidate.FinishReason]
        PROHIBITED_CONTENT: _ClassVar[Candidate.FinishReason]
        SPII: _ClassVar[Candidate.FinishReason]
        MALFORMED_FUNCTION_CALL: _ClassVar[Candidate.FinishReason]
        IMAGE_SAFETY: _ClassVar[Candidate.FinishReason]
        UNEXPECTED_TOOL_CALL: _ClassVar[Candidate.FinishReason]
        TOO_MANY_TOOL_CALLS: _ClassVar[Candidate.FinishReason]
        IMAGE_PROHIBITED_CONTENT: _ClassVar[Candidate.FinishReason]
        IMAGE_OTHER: _ClassVar[Candidate.FinishReason]
        NO_IMAGE: _ClassVar[Candidate.FinishReason]
        IMAGE_RECITATION: _ClassVar[Candidate.FinishReason]
    FINISH_REASON_UNSPECIFIED: Candidate.FinishReason
    STOP: Candidate.FinishReason
    MAX_TOKENS: Candidate.FinishReason
    SAFETY: Candidate.FinishReason
    RECITATION: Candidate.FinishReason
    OTHER: Candidate.FinishReason
    LANGUAGE: Candidate.FinishReason
    BLOCKLIST: Candidate.FinishReason
    PROHIBITED_CONTENT: Candidate.FinishReason
    SPII: Candidate.FinishReason
    MALFORMED_FUNCTION_CALL: Candidate.FinishReason
    IMAGE_SAFETY: Candidate.FinishReason
    UNEXPECTED_TOOL_CALL: Candidate.FinishReason
    TOO_MANY_TOOL_CALLS: Candidate.FinishReason
    IMAGE_PROHIBITED_CONTENT: Candidate.FinishReason
    IMAGE_OTHER: Candidate.FinishReason
    NO_IMAGE: Candidate.FinishReason
    IMAGE_RECITATION: Candidate.FinishReason
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    FINISH_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAFETY_RATINGS_FIELD_NUMBER: _ClassVar[int]
    CITATION_METADATA_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_METADATA_FIELD_NUMBER: _ClassVar[int]
    AVG_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_RESULT_FIELD_NUMBER: _ClassVar[int]
    URL_CONTEXT_METADATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    content: _content_pb2.Content
    finish_reason: Candidate.FinishReason
    finish_message: str
    safety_ratings: _containers.RepeatedCompositeFieldContainer[_safety_pb2.SafetyRating]
    citation_metadata: _citation_pb2.CitationMetadata
    token_count: int
    grounding_attributions: _containers.RepeatedCompositeFieldContainer[GroundingAttribution]
    grounding_metadata: GroundingMetadata
    avg_logprobs: float
    logprobs_result: LogprobsResult
    url_context_metadata: UrlContextMetadata
    def __init__(self, index: _Optional[int] = ..., content: _Optional[_Union[_content_pb2.Content, _Mapping]] = ..., finish_reason: _Optional[_Union[Candidate.FinishReason, str]] = ..., finish_message: _Optional[str] = ..., safety_ratings: _Optional[_Iterable[_Union[_safety_pb2.SafetyRating, _Mapping]]] = ..., citation_metadata: _Optional[_Union[_citation_pb2.CitationMetadata, _Mapping]] = ..., token_count: _Optional[int] = ..., grounding_attributions: _Optional[_Iterable[_Union[GroundingAttribution, _Mapping]]] = ..., grounding_metadata: _Optional[_Union[GroundingMetadata, _Mapping]] = ..., avg_logprobs: _Optional[float] = ..., logprobs_result: _Optional[_Union[LogprobsResult, _Mapping]] = ..., url_context_metadata: _Optional[_Union[UrlContextMetadata, _Mapping]] = ...) -> None: ...

class UrlContextMetadata(_message.Message):
    __slots__ = ("url_metadata",)
    URL_METADATA_FIELD_NUMBER: _ClassVar[int]
    url_metadata: _containers.RepeatedCompositeFieldContainer[UrlMetadata]
    def __init__(self, url_metadata: _Optional[_Iterable[_Union[UrlMetadata, _Mapping]]] = ...) -> None: ...

class UrlMetadata(_message.Message):
    __slots__ = ("retrieved_url", "url_retrieval_status")
    class UrlRetrievalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        URL_RETRIEVAL_STATUS_UNSPECIFIED: _ClassVar[UrlMetadata.UrlRetrievalStatus]
        URL_RETRIEVAL_STATUS_SUCCESS: _ClassVar[UrlMetadata.UrlRetrievalStatus]
        URL_RETRIEVAL_STATUS_ERROR: _ClassVar[UrlMetadata.UrlRetrievalStatus]
        URL_RETRIEVAL_STATUS_PAYWALL: _ClassVar[UrlMetadata.UrlRetrievalStatus]
        URL_RETRIEVAL_STATUS_UNSAFE: _ClassVar[UrlMetadata.UrlRetrievalStatus]
    URL_RETRIEVAL_STATUS_UNSPECIFIED: UrlMetadata.UrlRetrievalStatus
    URL_RETRIEVAL_STATUS_SUCCESS: UrlMetadata.UrlRetrievalStatus
    URL_RETRIEVAL_STATUS_ERROR: UrlMetadata.UrlRetrievalStatus
    URL_RETRIEVAL_STATUS_PAYWALL: UrlMetadata.UrlRetrievalStatus
    URL_RETRIEVAL_STATUS_UNSAFE: UrlMetadata.UrlRetrievalStatus
    RETRIEVED_URL_FIELD_NUMBER: _ClassVar[int]
    URL_RETRIEVAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    retrieved_url: str
    url_retrieval_status: UrlMetadata.UrlRetrievalStatus
    def __init__(self, retrieved_url: _Optional[str] = ..., url_retrieval_status: _Optional[_Union[UrlMetadata.UrlRetrievalStatus, str]] = ...) -> None: ...

class LogprobsResult(_message.Message):
    __slots__ = ("log_probability_sum", "top_candidates", "chosen_candidates")
    class Candidate(_message.Message):
        __slots__ = ("token", "token_id", "log_probability")
        TOKEN_FIELD_NUMBER: _ClassVar[int]
        TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
        LOG_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
        token: str
        token_id: int
        log_probability: float
        def __init__(self, token: _Optional[str] = ..., token_id: _Optional[int] = ..., log_probability: _Optional[float] = ...) -> None: ...
    class TopCandidates(_message.Message):
        __slots__ = ("candidates",)
        CANDIDATES_FIELD_NUMBER: _ClassVar[int]
        candidates: _containers.RepeatedCompositeFieldContainer[LogprobsResult.Candidate]
        def __init__(self, candidates: _Optional[_Iterable[_Union[LogprobsResult.Candidate, _Mapping]]] = ...) -> None: ...
    LOG_PROBABILITY_SUM_FIELD_NUMBER: _ClassVar[int]
    TOP_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    log_probability_sum: float
    top_candidates: _containers.RepeatedCompositeFieldContainer[LogprobsResult.TopCandidates]
    chosen_candidates: _containers.RepeatedCompositeFieldContainer[LogprobsResult.Candidate]
    def __init__(self, log_probability_sum: _Optional[float] = ..., top_candidates: _Optional[_Iterable[_Union[LogprobsResult.TopCandidates, _Mapping]]] = ..., chosen_candidates: _Optional[_Iterable[_Union[LogprobsResult.Candidate, _Mapping]]] = ...) -> None: ...

class AttributionSourceId(_message.Message):
    __slots__ = ("grounding_passage", "semantic_retriever_chunk")
    class GroundingPassageId(_message.Message):
        __slots__ = ("passage_id", "part_index")
        PASSAGE_ID_FIELD_NUMBER: _ClassVar[int]
        PART_INDEX_FIELD_NUMBER: _ClassVar[int]
        passage_id: str
        part_index: int
        def __init__(self, passage_id: _Optional[str] = ..., part_index: _Optional[int] = ...) -> None: ...
    class SemanticRetrieverChunk(_message.Message):
        __slots__ = ("source", "chunk")
        SOURCE_FIELD_NUMBER: _ClassVar[int]
        CHUNK_FIELD_NUMBER: _ClassVar[int]
        source: str
        chunk: str
        def __init__(self, source: _Optional[str] = ..., chunk: _Optional[str] = ...) -> None: ...
    GROUNDING_PASSAGE_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_RETRIEVER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    grounding_passage: AttributionSourceId.GroundingPassageId
    semantic_retriever_chunk: AttributionSourceId.SemanticRetrieverChunk
    def __init__(self, grounding_passage: _Optional[_Union[AttributionSourceId.GroundingPassageId, _Mapping]] = ..., semantic_retriever_chunk: _Optional[_Union[AttributionSourceId.SemanticRetrieverChunk, _Mapping]] = ...) -> None: ...

class GroundingAttribution(_message.Message):
    __slots__ = ("source_id", "content")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    source_id: AttributionSourceId
    content: _content_pb2.Content
    def __init__(self, source_id: _Optional[_Union[AttributionSourceId, _Mapping]] = ..., content: _Optional[_Union[_content_pb2.Content, _Mapping]] = ...) -> None: ...

class RetrievalMetadata(_message.Message):
    __slots__ = ("google_search_dynamic_retrieval_score",)
    GOOGLE_SEARCH_DYNAMIC_RETRIEVAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    google_search_dynamic_retrieval_score: float
    def __init__(self, google_search_dynamic_retrieval_score: _Optional[float] = ...) -> None: ...

class GroundingMetadata(_message.Message):
    __slots__ = ("search_entry_point", "grounding_chunks", "grounding_supports", "retrieval_metadata", "web_search_queries", "google_maps_widget_context_token")
    SEARCH_ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_SUPPORTS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_METADATA_FIELD_NUMBER: _ClassVar[int]
    WEB_SEARCH_QUERIES_FIELD_NUMBER: _ClassVar[int]
    GOOGLE_MAPS_WIDGET_CONTEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    search_entry_point: SearchEntryPoint
    grounding_chunks: _containers.RepeatedCompositeFieldContainer[GroundingChunk]
    grounding_supports: _containers.RepeatedCompositeFieldContainer[GroundingSupport]
    retrieval_metadata: RetrievalMetadata
    web_search_queries: _containers.RepeatedScalarFieldContainer[str]
    google_maps_widget_context_token: str
    def __init__(self, search_entry_point: _Optional[_Union[SearchEntryPoint, _Mapping]] = ..., grounding_chunks: _Optional[_Iterable[_Union[GroundingChunk, _Mapping]]] = ..., grounding_supports: _Optional[_Iterable[_Union[GroundingSupport, _Mapping]]] = ..., retrieval_metadata: _Optional[_Union[RetrievalMetadata, _Mapping]] = ..., web_search_queries: _Optional[_Iterable[str]] = ..., google_maps_widget_context_token: _Optional[str] = ...) -> None: ...

class SearchEntryPoint(_message.Message):
    __slots__ = ("rendered_content", "sdk_blob")
    RENDERED_CONTENT_FIELD_NUMBER: _ClassVar[int]
    SDK_BLOB_FIELD_NUMBER: _ClassVar[int]
    rendered_content: str
    sdk_blob: bytes
    def __init__(self, rendered_content: _Optional[str] = ..., sdk_blob: _Optional[bytes] = ...) -> None: ...

class GroundingChunk(_message.Message):
    __slots__ = ("web", "retrieved_context", "maps")
    class Web(_message.Message):
        __slots__ = ("uri", "title")
        URI_FIELD_NUMBER: _ClassVar[int]
        TITLE_FIELD_NUMBER: _ClassVar[int]
        uri: str
        title: str
        def __init__(self, uri: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...
    class RetrievedContext(_message.Message):
        __slots__ = ("uri", "title", "text")
        URI_FIELD_NUMBER: _ClassVar[int]
        TITLE_FIELD_NUMBER: _ClassVar[int]
        TEXT_FIELD_NUMBER: _ClassVar[int]
        uri: str
        title: str
        text: str
        def __init__(self, uri: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...
    class Maps(_message.Message):
        __slots__ = ("uri", "title", "text", "place_id", "place_answer_sources")
        class PlaceAnswerSources(_message.Message):
            __slots__ = ("review_snippets",)
            class ReviewSnippet(_message.Message):
                __slots__ = ("review_id", "google_maps_uri", "title")
                REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
                GOOGLE_MAPS_URI_FIELD_NUMBER: _ClassVar[int]
                TITLE_FIELD_NUMBER: _ClassVar[int]
                review_id: str
                google_maps_uri: str
                title: str
                def __init__(self, review_id: _Optional[str] = ..., google_maps_uri: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...
            REVIEW_SNIPPETS_FIELD_NUMBER: _ClassVar[int]
            review_snippets: _containers.RepeatedCompositeFieldContainer[GroundingChunk.Maps.PlaceAnswerSources.ReviewSnippet]
            def __init__(self, review_snippets: _Optional[_Iterable[_Union[GroundingChunk.Maps.PlaceAnswerSources.ReviewSnippet, _Mapping]]] = ...) -> None: ...
        URI_FIELD_NUMBER: _ClassVar[int]
        TITLE_FIELD_NUMBER: _ClassVar[int]
        TEXT_FIELD_NUMBER: _ClassVar[int]
        PLACE_ID_FIELD_NUMBER: _ClassVar[int]
        PLACE_ANSWER_SOURCES_FIELD_NUMBER: _ClassVar[int]
        uri: str
        title: str
        text: str
        place_id: str
        place_answer_sources: GroundingChunk.Maps.PlaceAnswerSources
        def __init__(self, uri: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., place_id: _Optional[str] = ..., place_answer_sources: _Optional[_Union[GroundingChunk.Maps.PlaceAnswerSources, _Mapping]] = ...) -> None: ...
    WEB_FIELD_NUMBER: _ClassVar[int]
    RETRIEVED_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    web: GroundingChunk.Web
    retrieved_context: GroundingChunk.RetrievedContext
    maps: GroundingChunk.Maps
    def __init__(self, web: _Optional[_Union[GroundingChunk.Web, _Mapping]] = ..., retrieved_context: _Optional[_Union[GroundingChunk.RetrievedContext, _Mapping]] = ..., maps: _Optional[_Union[GroundingChunk.Maps, _Mapping]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("part_index", "start_index", "end_index", "text")
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    END_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    part_index: int
    start_index: int
    end_index: int
    text: str
    def __init__(self, part_index: _Optional[int] = ..., start_index: _Optional[int] = ..., end_index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class GroundingSupport(_message.Message):
    __slots__ = ("segment", "grounding_chunk_indices", "confidence_scores")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_CHUNK_INDICES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SCORES_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    grounding_chunk_indices: _containers.RepeatedScalarFieldContainer[int]
    confidence_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ..., grounding_chunk_indices: _Optional[_Iterable[int]] = ..., confidence_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedContentRequest(_message.Message):
    __slots__ = ("model", "content", "task_type", "title", "output_dimensionality")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIMENSIONALITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    content: _content_pb2.Content
    task_type: TaskType
    title: str
    output_dimensionality: int
    def __init__(self, model: _Optional[str] = ..., content: _Optional[_Union[_content_pb2.Content, _Mapping]] = ..., task_type: _Optional[_Union[TaskType, str]] = ..., title: _Optional[str] = ..., output_dimensionality: _Optional[int] = ...) -> None: ...

class ContentEmbedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedContentResponse(_message.Message):
    __slots__ = ("embedding",)
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    embedding: ContentEmbedding
    def __init__(self, embedding: _Optional[_Union[ContentEmbedding, _Mapping]] = ...) -> None: ...

class BatchEmbedContentsRequest(_message.Message):
    __slots__ = ("model", "requests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    requests: _containers.RepeatedCompositeFieldContainer[EmbedContentRequest]
    def __init__(self, model: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[EmbedContentRequest, _Mapping]]] = ...) -> None: ...

class BatchEmbedContentsResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[ContentEmbedding]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[ContentEmbedding, _Mapping]]] = ...) -> None: ...

class CountTokensRequest(_message.Message):
    __slots__ = ("model", "contents", "generate_content_request")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_CONTENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    model: str
    contents: _containers.RepeatedCompositeFieldContainer[_content_pb2.Content]
    generate_content_request: GenerateContentRequest
    def __init__(self, model: _Optional[str] = ..., contents: _Optional[_Iterable[_Union[_content_pb2.Content, _Mapping]]] = ..., generate_content_request: _Optional[_Union[GenerateContentRequest, _Mapping]] = ...) -> None: ...

class CountTokensResponse(_message.Message):
    __slots__ = ("total_tokens", "cached_content_token_count", "prompt_tokens_details", "cache_tokens_details")
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_CONTENT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_DETAILS_FIELD_NUMBER: _ClassVar[int]
    CACHE_TOKENS_DETAILS_FIELD_NUMBER: _ClassVar[int]
    total_tokens: int
    cached_content_token_count: int
    prompt_tokens_details: _containers.RepeatedCompositeFieldContainer[_content_pb2.ModalityTokenCount]
    cache_tokens_details: _containers.RepeatedCompositeFieldContainer[_content_pb2.ModalityTokenCount]
    def __init__(self, total_tokens: _Optional[int] = ..., cached_content_token_count: _Optional[int] = ..., prompt_tokens_details: _Optional[_Iterable[_Union[_content_pb2.ModalityTokenCount, _Mapping]]] = ..., cache_tokens_details: _Optional[_Iterable[_Union[_content_pb2.ModalityTokenCount, _Mapping]]] = ...) -> None: ...
